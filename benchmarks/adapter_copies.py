"""Many distinct text adapters for benchmarks: copies of one demo adapter with every tensor scaled
by a seeded random factor (same shapes and config, different outputs)."""

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
