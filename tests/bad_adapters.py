"""Adapters that must be refused, built from one good PEFT LoRA directory, for unit and e2e tests.

``build_bad_adapters`` returns (case, registration body fragment, expected message substring);
an end-to-end test registers each over HTTP and asserts the message. ``write_lora`` writes a PEFT
LoRA by hand (numpy + safetensors, no torch); ``llama_modules`` lists a Llama's LoRA-able Linears.
"""

import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def llama_modules(
    hidden: int = 128,
    intermediate: int = 256,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    head_dim: int = 64,
) -> dict[str, tuple[int, int]]:
    """Module name -> (in_features, out_features) for each decoder Linear of a Llama."""
    shapes = {
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.k_proj": (hidden, kv_heads * head_dim),
        "self_attn.v_proj": (hidden, kv_heads * head_dim),
        "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, intermediate),
        "mlp.up_proj": (hidden, intermediate),
        "mlp.down_proj": (intermediate, hidden),
    }
    return {f"model.layers.{i}.{k}": v for i in range(layers) for k, v in shapes.items()}


def write_lora(
    path: Path,
    modules: dict[str, tuple[int, int]],
    base_ref: str,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    r: int = 8,
    seed: int = 0,
) -> Path:
    """Write a PEFT-format LoRA (config + safetensors) for the ``modules`` matching ``targets``."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (fan_in, fan_out) in modules.items():
        if any(name.endswith("." + t) for t in targets):
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.1, (r, fan_in)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.1, (fan_out, r)).astype(np.float32)
    save_file(tensors, str(path / WEIGHTS))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(targets),
        "base_model_name_or_path": base_ref,
    }
    (path / CONFIG).write_text(json.dumps(config))
    return path


def _copy(good: Path, dst: Path) -> Path:
    shutil.copytree(good, dst)
    return dst


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / CONFIG).read_text())
    for k, v in changes.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    (path / CONFIG).write_text(json.dumps(config))


def _edit_tensors(path: Path, edit) -> None:
    tensors = load_file(str(path / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(path / WEIGHTS))


def build_bad_adapters(
    root: Path, good_adapter_dir: Path, base_ref: str
) -> list[tuple[str, dict, str]]:
    """Make every bad adapter under ``root`` (which must be an allowed root); ``base_ref`` is
    what the good adapter's base_model_name_or_path says. Returns (case, body fragment, message).
    """
    root.mkdir(parents=True, exist_ok=True)
    good = Path(good_adapter_dir)
    config = json.loads((good / CONFIG).read_text())
    r = config["r"]
    cases: list[tuple[str, dict, str]] = []

    def case(name: str, message: str, **fragment) -> Path:
        path = root / name
        cases.append((name, {"source": str(path), **fragment}, message))
        return path

    p = _copy(good, case("missing-config", "adapter_config.json is missing"))
    (p / CONFIG).unlink()

    p = _copy(good, case("config-not-json", "adapter_config.json is not valid JSON"))
    (p / CONFIG).write_text('{"peft_type": "LORA", "r": ')

    p = _copy(good, case("not-lora", "peft_type is 'IA3'; only LORA adapters are served"))
    _edit_config(p, peft_type="IA3")

    p = _copy(good, case("rank-not-int", "rank r='eight' in adapter_config.json is not a positive"))
    _edit_config(p, r="eight")

    p = _copy(good, case("rank-too-large", "rank 1024 exceeds this deployment's max_lora_rank"))
    _edit_config(p, r=1024)

    p = _copy(good, case("rank-mismatch", f"has rank {r}, but adapter_config.json says r="))
    _edit_config(p, r=r // 2 if r > 1 else 2)

    p = _copy(good, case("wrong-base", "it was trained for base model 'some-org/another-model'"))
    _edit_config(p, base_model_name_or_path="some-org/another-model")

    p = _copy(good, case("no-target-modules", "adapter_config.json has no target_modules"))
    _edit_config(p, target_modules=None)

    p = _copy(good, case("unknown-target", "target module 'no_such_proj' matches no module"))
    _edit_config(p, target_modules=[*config["target_modules"], "no_such_proj"])

    p = _copy(good, case("pickle-bin", "'adapter_model.bin' is a pickled file, refused"))
    (p / WEIGHTS).unlink()
    (p / "adapter_model.bin").write_bytes(pickle.dumps({"lora_A": [0.0] * 8}))

    p = _copy(good, case("missing-weights", "adapter_model.safetensors is missing"))
    (p / WEIGHTS).unlink()

    p = _copy(good, case("corrupt-header-length", "header length"))
    data = (p / WEIGHTS).read_bytes()
    (p / WEIGHTS).write_bytes(struct.pack("<Q", 2**40) + data[8:])

    p = _copy(good, case("header-not-json", "(header is not JSON)"))
    data = bytearray((p / WEIGHTS).read_bytes())
    data[8:12] = b"\xff\xfe\x00{"
    (p / WEIGHTS).write_bytes(bytes(data))

    p = _copy(good, case("truncated", "'adapter_model.safetensors' is truncated"))
    data = (p / WEIGHTS).read_bytes()
    (p / WEIGHTS).write_bytes(data[: len(data) - 100])

    def widen_first_a(t: dict) -> None:
        key = sorted(k for k in t if k.endswith("lora_A.weight"))[0]
        t[key] = np.zeros((t[key].shape[0], t[key].shape[1] + 1), np.float32)

    p = _copy(good, case("shape-mismatch", "has shape"))
    _edit_tensors(p, widen_first_a)

    def add_missing_layer(t: dict) -> None:
        t["base_model.model.model.layers.999.self_attn.q_proj.lora_A.weight"] = np.zeros(
            (r, 4), np.float32
        )

    p = _copy(good, case("module-not-in-base", "'model.layers.999.self_attn.q_proj', which the"))
    _edit_tensors(p, add_missing_layer)

    def add_full_weight(t: dict) -> None:
        t["base_model.model.lm_head.weight"] = np.zeros((4, 4), np.float32)

    p = _copy(good, case("not-a-lora-tensor", "tensor 'base_model.model.lm_head.weight' is not a"))
    _edit_tensors(p, add_full_weight)

    def drop_first_b(t: dict) -> None:
        del t[sorted(k for k in t if k.endswith("lora_B.weight"))[0]]

    p = _copy(good, case("missing-lora-b", "has no lora_B tensor"))
    _edit_tensors(p, drop_first_b)

    _copy(good, case("wrong-sha256", "sha256 of 'adapter_model.safetensors' is", sha256="0" * 64))

    # 2 GiB + 4 KiB, sparse (no real disk): over the default 2 GiB per-adapter cap.
    p = _copy(good, case("oversized", "bytes, over the cap of"))
    with (p / WEIGHTS).open("r+b") as f:
        f.truncate(2**31 + 4096)

    p = case("symlink-escape", "links outside the allowed roots")
    p.mkdir()
    shutil.copy(good / WEIGHTS, p / WEIGHTS)
    (p / CONFIG).symlink_to("/etc/hostname")

    case("missing-path", "does not exist")
    # Names and URIs that try to leave their source.
    cases += [
        ("dotdot-path", {"source": f"{root}/../{root.name}/{good.name}"}, "'..' segments"),
        ("outside-roots", {"source": "/etc"}, "outside the allowed roots"),
        ("file-uri-host", {"source": "file://evil.example/etc"}, "file:// URIs take no host"),
        ("percent-escape", {"source": f"file://{root}/%2e%2e/x"}, "percent-escapes"),
        ("query-string", {"source": "s3://bucket/adapter?versionId=1"}, "query strings"),
        ("hf-dotdot", {"source": "hf://org/repo/../../etc"}, "'..' segments"),
        ("hf-absolute", {"source": "hf:///etc/passwd"}, "names cannot be absolute paths"),
        ("s3-bad-bucket", {"source": "s3://Bad_Bucket/x"}, "is not a valid bucket name"),
        ("unsupported-scheme", {"source": "http://example.com/a"}, "unsupported scheme 'http'"),
        ("bad-name", {"source": str(good), "name": "../evil"}, "invalid adapter name"),
    ]
    return cases
