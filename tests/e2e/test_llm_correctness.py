"""Greedy output served through vLLM equals Transformers + PEFT greedy output with the same adapter
(same token ids; where the reference's top two logits are within 1e-4, either token is accepted),
for the base and every demo adapter. Also the app's own PEFT engine agrees, over HTTP."""

import pytest

from tests.e2e.conftest import BASE, REF_BASE

PROMPTS = ["Hello, how are you", "SELECT name FROM"]
NEW_TOKENS = 16
TIE = 1e-4


@pytest.fixture(scope="module")
def reference(demo_assets):
    """Transformers + PEFT, built here in the test process, independent of the app."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(demo_assets["llm"]["base"], dtype=torch.float32)
    models = {None: base.eval()}
    for name, path in demo_assets["llm"]["adapters"].items():
        fresh = AutoModelForCausalLM.from_pretrained(
            demo_assets["llm"]["base"], dtype=torch.float32
        )
        models[name] = PeftModel.from_pretrained(fresh, path).eval()
    return models


def _served(http, model: str, prompt: str) -> tuple[list[int], list[int]]:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    choice = out["choices"][0]
    return choice["prompt_token_ids"], choice["token_ids"]


def _check_against(model, prompt_ids: list[int], served: list[int]) -> None:
    import torch

    ids = list(prompt_ids)
    with torch.inference_mode():
        for step, token in enumerate(served):
            logits = model(torch.tensor([ids])).logits[0, -1]
            top2 = torch.topk(logits, 2)
            best = int(top2.indices[0])
            if token != best:
                tie = float(top2.values[0] - top2.values[1]) < TIE
                assert tie and token == int(top2.indices[1]), (
                    f"step {step}: served {token}, reference {best} "
                    f"(logit gap {float(top2.values[0] - logits[token]):.2e})"
                )
            ids.append(token)


@pytest.mark.parametrize("adapter", [None, "sql", "poet", "chef", "pirate"])
def test_vllm_matches_transformers_peft(http, reference, adapter):
    model = BASE if adapter is None else f"{BASE}:{adapter}"
    for prompt in PROMPTS:
        prompt_ids, served = _served(http, model, prompt)
        assert len(served) == NEW_TOKENS
        _check_against(reference[adapter], prompt_ids, served)


@pytest.mark.parametrize("adapter", [None, "chef"])
def test_peft_engine_deployment_agrees_with_vllm(http, adapter):
    vllm_model = BASE if adapter is None else f"{BASE}:{adapter}"
    peft_model = REF_BASE if adapter is None else f"{REF_BASE}:ref-{adapter}"
    assert _served(http, vllm_model, PROMPTS[0]) == _served(http, peft_model, PROMPTS[0])
