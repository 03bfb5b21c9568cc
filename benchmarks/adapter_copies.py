"""Many distinct text adapters for benchmarks: copies of one demo adapter with every tensor scaled
by a seeded random factor (same shapes and config, different outputs); and a production-sized
template to copy (rank 64 over every linear layer)."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def make_adapter_copies(template: str | Path, n: int, root: Path, prefix: str = "a") -> dict:
    """Write ``n`` adapters under ``root``; return {name: path}."""
    import shutil

    src = Path(template)
    tensors = load_file(str(src / "adapter_model.safetensors"))
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        d = Path(root) / f"{prefix}{i}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "adapter_config.json", d)
        scaled = {k: (v * rng.uniform(0.5, 1.5)).astype(v.dtype) for k, v in tensors.items()}
        save_file(scaled, str(d / "adapter_model.safetensors"))
        out[f"{prefix}{i}"] = str(d.resolve())
    return out


def make_large_template(base: str | Path, base_id: str, root: Path, rank: int = 64) -> Path:
    """A production-sized adapter for ``base``: rank ``rank`` over every linear layer (PEFT's
    ``all-linear``), small random weights, saved by PEFT under ``root/template-r<rank>``. Built
    once; copies of it (``make_adapter_copies``) make loads cost what they cost in production."""
    out = Path(root) / f"template-r{rank}"
    if (out / "adapter_model.safetensors").exists():
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base), torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear",
                        init_lora_weights=False)  # fmt: skip
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # random B, scaled so outputs stay sane
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    peft_model.save_pretrained(str(out))
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_id  # the served base, as the demo adapters declare it
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out
