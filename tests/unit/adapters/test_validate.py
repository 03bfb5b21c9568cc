"""Validation: real PEFT LoRAs pass; each bad adapter is refused with its own message."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from adapters.errors import AdapterError, InvalidAdapterError
from adapters.sources import Fetcher
from adapters.spec import AdapterSpec
from adapters.validate import (
    ValidatedAdapter,
    ValidationRules,
    validate_text_lora,
    validate_weight_file,
)
from tests.bad_adapters import build_bad_adapters, llama_modules, write_lora

RULES = ValidationRules(max_rank=16)
BASE_REF = "test-org/tiny-llama"  # what the conftest's LoRA names as its base


def prepare(fetcher: Fetcher, body: dict, base, rules=RULES) -> ValidatedAdapter:
    """What a deployment does at registration: spec, check source, fetch, validate."""
    import asyncio

    spec = AdapterSpec(**body)
    fetcher.check(spec)
    path = asyncio.run(fetcher.fetch(spec))
    return validate_text_lora(spec, path, base, rules)


def test_a_real_peft_lora_is_accepted_with_rank_and_size_filled(tiny_base):
    good, base = tiny_base
    spec = AdapterSpec(name="good", source=str(good))
    v = validate_text_lora(spec, good, base, RULES)
    size = (good / "adapter_model.safetensors").stat().st_size
    assert (v.rank, v.size_bytes, v.path) == (8, size, good)
    assert (v.spec.rank, v.spec.size_bytes, v.spec.name) == (8, size, "good")


def test_hand_written_lora_matches_the_real_model_layout(tiny_base, tmp_path):
    _, base = tiny_base
    modules = llama_modules()
    assert {k: base.modules[k] for k in modules} == modules
    path = write_lora(tmp_path / "hand", modules, BASE_REF, targets=("q_proj", "down_proj"), r=4)
    v = validate_text_lora(AdapterSpec(name="hand", source=str(path)), path, base, RULES)
    assert v.rank == 4


def test_regex_target_modules_use_full_match(tiny_base, tmp_path):
    good, base = tiny_base
    path = shutil.copytree(good, tmp_path / "regex")
    config = json.loads((path / "adapter_config.json").read_text())
    spec = AdapterSpec(name="regex", source=str(path))
    config["target_modules"] = r".*\.(q_proj|v_proj)"
    (path / "adapter_config.json").write_text(json.dumps(config))
    assert validate_text_lora(spec, path, base, RULES).rank == 8
    config["target_modules"] = "q_proj"  # a string is a regex: must match a whole name
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidAdapterError, match="regex 'q_proj' matches no module"):
        validate_text_lora(spec, path, base, RULES)


def test_right_sha256_is_accepted(tiny_base):
    good, base = tiny_base
    digest = hashlib.sha256((good / "adapter_model.safetensors").read_bytes()).hexdigest()
    spec = AdapterSpec(name="good", source=str(good), sha256=digest)
    assert validate_text_lora(spec, good, base, RULES).rank == 8


@pytest.fixture(scope="module")
def bad_cases(tiny_base, tmp_path_factory):
    good, _ = tiny_base
    root = tmp_path_factory.mktemp("bad")
    return root, build_bad_adapters(root / "adapters", good, BASE_REF)


def test_there_are_many_bad_cases_each_with_its_own_message(bad_cases):
    _, cases = bad_cases
    assert len(cases) >= 15
    messages = [m for _, _, m in cases]
    shared = {"'..' segments", "outside the allowed roots"}  # one rule, several ways in
    assert len(set(messages) - shared) == len([m for m in messages if m not in shared])


def test_every_bad_adapter_is_refused_with_its_message(bad_cases, tiny_base):
    root, cases = bad_cases
    _, base = tiny_base
    fetcher = Fetcher(allowed_roots=[root], cache_dir=root / "cache")
    refused = {}
    for case, fragment, expected in cases:
        body = {"name": case, **fragment}
        with pytest.raises(AdapterError) as info:
            prepare(fetcher, body, base)
        refused[case] = str(info.value)
        assert expected in str(info.value), (case, str(info.value))
        if case != "bad-name":
            assert f"adapter '{case}'" in str(info.value)
    assert len(set(refused.values())) == len(refused), "two cases got the very same message"


def test_deployment_switches_relax_their_rules(bad_cases, tiny_base):
    root, cases = bad_cases
    _, base = tiny_base
    fetcher = Fetcher(allowed_roots=[root], cache_dir=root / "cache")
    by_name = {c: f for c, f, _ in cases}
    lenient = ValidationRules(max_rank=16, allow_pickle=True, check_base_model=False)
    assert prepare(fetcher, {"name": "wb", **by_name["wrong-base"]}, base, lenient).rank == 8
    bin_adapter = prepare(fetcher, {"name": "pb", **by_name["pickle-bin"]}, base, lenient)
    assert (
        bin_adapter.size_bytes
        == (Path(by_name["pickle-bin"]["source"]) / "adapter_model.bin").stat().st_size
    )


def test_weight_file_checks_for_image_loras(tiny_base, tmp_path):
    good, _ = tiny_base
    spec = AdapterSpec(
        name="img", source=str(tmp_path), kind="image", weight_name="style.safetensors"
    )
    f = shutil.copy(good / "adapter_model.safetensors", tmp_path / "style.safetensors")
    assert validate_weight_file(spec, Path(f), RULES) == Path(f).stat().st_size
    other = tmp_path / "style.onnx"
    other.write_bytes(b"x")
    with pytest.raises(InvalidAdapterError, match="'style.onnx' is not a .safetensors file"):
        validate_weight_file(spec, other, RULES)
    with pytest.raises(InvalidAdapterError, match="over the cap of 10 bytes"):
        validate_weight_file(spec, Path(f), ValidationRules(max_rank=8, max_bytes=10))
