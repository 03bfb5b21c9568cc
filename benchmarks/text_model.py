"""Which text base a benchmark serves (``--model``): ``tiny`` (the random 2-layer demo Llama, where
per-request overhead dominates) or ``smollm2`` (SmolLM2-135M-Instruct, 30 layers, where engine
time dominates, as on real deployments). Both come with demo adapters named alike."""

import os
from pathlib import Path

MODELS = ("tiny", "smollm2")


def text_assets(model: str) -> tuple[str, dict]:
    """The served base id and the demo assets (``{"base", "adapters"}``) for ``model``."""
    root = Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo"))
    if model == "smollm2":
        from serve_app.demo.smollm2 import BASE_ID, build_smollm2_assets

        return BASE_ID, build_smollm2_assets(root)
    from serve_app.demo.llm_assets import BASE_ID, build_llm_assets

    return BASE_ID, build_llm_assets(root)


def out_path(out: str, model: str) -> str:
    """``results/x.json`` -> ``results/x-smollm2.json`` for a non-default model."""
    return out if model == "tiny" else out.removesuffix(".json") + f"-{model}.json"
