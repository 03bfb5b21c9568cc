"""The real demo model: SmolLM2-135M-Instruct served by vLLM (CPU) with the committed demo adapters.

One vLLM engine (the project's VLLMEngine, as a replica runs it) answers the held-out prompts for
the base and every demo adapter, all at once, so vLLM batches base and adapter requests together
(a mixed batch once gave base requests the adapter in vLLM's last LoRA slot). Checked:

- vLLM's greedy output equals Transformers + PEFT's on the same adapter: every served token is the
  reference's best next token (teacher-forced over the served sequence), or within 1e-4 of it.
- Each adapter's effect on the held-out prompts meets its threshold (serve_app.demo.effects), and
  the base's score on the same prompts stays under its ceiling.
- The served chat prompt is the one the adapters were trained on (same chat template, same ids).
"""

import asyncio
import os
from pathlib import Path

import pytest

from serve_app.demo.effects import THRESHOLDS, score
from serve_app.demo.train_data import HELD_OUT, SQL_HELD_OUT

MAX_TOKENS = 40
TIE = 1e-4
SETS = {"general": HELD_OUT, "sql": SQL_HELD_OUT}
ADAPTERS = list(THRESHOLDS)


@pytest.fixture(scope="module")
def assets() -> dict:
    from serve_app.demo.smollm2 import build_smollm2_assets

    info = build_smollm2_assets(Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")))
    assert sorted(info["adapters"]) == sorted(ADAPTERS)
    return info


async def _serve_all(assets: dict) -> dict:
    from serve_app.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(
        name="smollm2",
        model=assets["base"],
        dtype="float32",
        max_loras=len(ADAPTERS),
        max_lora_rank=16,
        max_model_len=512,
        engine_kwargs={"enforce_eager": True},
    )
    await engine.start()
    try:
        for name, path in assets["adapters"].items():
            await engine.load_adapter(name, path)

        async def ask(model: str, prompt: str) -> dict:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "return_token_ids": True,
            }
            out = await engine.chat(body)
            choice = out["choices"][0]
            return {
                "prompt": prompt,
                "prompt_ids": out["prompt_token_ids"],
                "ids": choice["token_ids"],
                "text": choice["message"]["content"],
                "finished": choice["finish_reason"] == "stop",
            }

        jobs = {(None, kind): SETS[kind] for kind in SETS}
        jobs |= {(name, THRESHOLDS[name][0]): SETS[THRESHOLDS[name][0]] for name in ADAPTERS}
        keys = list(jobs)
        results = await asyncio.gather(
            *(asyncio.gather(*(ask(k[0] or "smollm2", p) for p in jobs[k])) for k in keys)
        )
        return dict(zip(keys, results, strict=True))
    finally:
        await engine.shutdown()


@pytest.fixture(scope="module")
def served(assets) -> dict:
    """(adapter or None, prompt set) -> the served answers, from one vLLM engine."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return asyncio.run(_serve_all(assets))


@pytest.fixture(scope="module")
def reference(assets):
    """Transformers + PEFT, loaded here, independent of the engine: adapter -> model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(assets["base"], dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, assets["adapters"][ADAPTERS[0]], ADAPTERS[0])
    for name in ADAPTERS[1:]:
        model.load_adapter(assets["adapters"][name], adapter_name=name)
    return model.eval(), AutoTokenizer.from_pretrained(assets["base"])


def test_served_prompt_is_the_training_prompt(served, reference):
    from serve_app.demo.train import chat_prompt

    _, tok = reference
    for answers in served.values():
        for a in answers[:3]:
            assert a["prompt_ids"] == chat_prompt(tok, a["prompt"])


@pytest.mark.parametrize("adapter", [None, *ADAPTERS])
def test_vllm_greedy_matches_transformers_peft(served, reference, adapter):
    import torch

    model, _ = reference
    checked = 0
    for (name, _kind), answers in served.items():
        if name != adapter:
            continue
        for a in answers:
            ids = a["prompt_ids"] + a["ids"]
            with torch.inference_mode():
                if adapter is None:
                    with model.disable_adapter():
                        logits = model(torch.tensor([ids])).logits[0]
                else:
                    model.set_adapter(adapter)
                    logits = model(torch.tensor([ids])).logits[0]
            n = len(a["prompt_ids"])
            for step, token in enumerate(a["ids"]):
                row = logits[n - 1 + step]
                gap = float(row.max() - row[token])
                assert gap <= TIE, (
                    f"{adapter} {a['prompt']!r} step {step}: served {token}, reference "
                    f"{int(row.argmax())} (logit gap {gap:.2e})"
                )
                checked += 1
    assert checked >= 20 * 10


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapter_effect_is_visible(served, adapter):
    kind, least, most_base = THRESHOLDS[adapter]
    answers = served[(adapter, kind)]
    ours = score(adapter, [(a["text"], a["finished"]) for a in answers])
    base = score(adapter, [(a["text"], a["finished"]) for a in served[(None, kind)]])
    print(f"{adapter}: adapter {ours:.2f} base {base:.2f}; e.g. {answers[0]['text']!r}")
    assert ours >= least, [a["text"] for a in answers]
    assert base <= most_base, [a["text"] for a in served[(None, kind)]]
