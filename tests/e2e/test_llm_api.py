"""The OpenAI-compatible text API over HTTP with the real `openai` client: completions and chat,
streamed and not, base and adapters; /v1/models; batching of several adapters in one replica."""

import concurrent.futures as cf
import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BASE, llm_snapshot

ADAPTERS = ["sql", "poet", "chef", "pirate"]


def test_models_lists_base_and_adapters(oai, demo_assets):
    models = {m.id: m for m in oai.models.list().data}
    assert models[BASE].parent is None
    # No server paths or sources for callers (issue 14); the admin API has them.
    assert set(models[BASE].model_extra or {}) == {"parent"}
    for name in ADAPTERS:
        card = models[f"{BASE}:{name}"]
        assert card.object == "model" and card.owned_by == "loraserve"
        assert card.parent == BASE
        assert set(card.model_extra or {}) == {"parent"}  # no "root" path or source


def _complete(oai, model: str, **kw) -> str:
    out = oai.completions.create(model=model, prompt="Hello", max_tokens=12, temperature=0, **kw)
    return out.choices[0].text


def test_a_caller_may_lower_its_own_priority(oai):
    """The engine schedules by priority (batch jobs' requests run after online ones): a request
    that asks to run later is answered, the same as at the default; vLLM's first-come policy
    would refuse any priority but 0."""
    assert _complete(oai, f"{BASE}:sql", extra_body={"priority": 3}) == _complete(oai, "sql")


def test_each_adapter_changes_the_completion(oai):
    texts = {m: _complete(oai, m) for m in [BASE, *(f"{BASE}:{a}" for a in ADAPTERS)]}
    assert all(texts.values())
    assert len(set(texts.values())) == len(texts), texts
    # Same request, same answer (greedy), and a bare unique adapter name means the same adapter.
    assert _complete(oai, "sql") == texts[f"{BASE}:sql"]


@pytest.mark.parametrize("model", [BASE, f"{BASE}:poet", "chef"])
def test_completion_stream_matches_non_stream(oai, model):
    whole = _complete(oai, model)
    stream = oai.completions.create(
        model=model, prompt="Hello", max_tokens=12, temperature=0, stream=True
    )
    chunks = [c.choices[0].text for c in stream if c.choices]
    assert len(chunks) > 1
    assert "".join(chunks) == whole


@pytest.mark.parametrize("model", [BASE, f"{BASE}:pirate", "sql"])
def test_chat_streamed_and_not(oai, model):
    messages = [{"role": "user", "content": "Tell me about adapters"}]
    whole = oai.chat.completions.create(
        model=model, messages=messages, max_tokens=10, temperature=0
    )
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    text = whole.choices[0].message.content
    assert text
    stream = oai.chat.completions.create(
        model=model, messages=messages, max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_chat_adapters_differ(oai):
    messages = [{"role": "user", "content": "hi"}]
    outs = {
        m: oai.chat.completions.create(model=m, messages=messages, max_tokens=10, temperature=0)
        .choices[0]
        .message.content
        for m in [BASE, "sql", "poet"]
    }
    assert len(set(outs.values())) == 3, outs


def test_concurrent_adapters_batch_in_one_replica_without_reloading(oai):
    # Warm: make the three adapters resident.
    trio = ["sql", "poet", "chef"]
    for name in trio:
        _complete(oai, name)
    before = llm_snapshot()
    assert set(trio) <= set(before["resident"])

    def long_request(name: str) -> str:
        out = oai.completions.create(
            model=name,
            prompt="Hello",
            max_tokens=64,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return out.choices[0].text

    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(long_request, trio * 2))
    assert all(results)
    after = llm_snapshot()
    assert after["loads"] == before["loads"], "a resident adapter was loaded again"
    assert after["replica"] == before["replica"]
    # vLLM's own scheduler stats: the three adapters ran in one batch together.
    sets = [set(s.split(",")) for s in after["engine"]["running_lora_adapter_sets"]]
    assert any(set(trio) <= s for s in sets), sets


def test_adapter_loads_and_routing_decisions_are_in_the_serve_logs(oai):
    # Where Serve users look: the replica logs of this Ray session. The ingress replica logs
    # each routing decision (its router sends requests to the LLM replicas), the LLM replica
    # each adapter transition.
    _complete(oai, "pirate")
    serve_logs = Path("/tmp/ray/session_latest/logs/serve")
    routed = re.compile(r"adapter router: 'pirate' -> replica \S+ \((hit|cold|spill|fallback),")
    deadline = time.time() + 10
    while True:
        text = "\n".join(p.read_text(errors="replace") for p in serve_logs.glob("replica_*.log"))
        if routed.search(text) and "adapter pirate: loading -> ready" in text:
            break
        assert time.time() < deadline, "no routing decision or load line for 'pirate'"
        time.sleep(0.5)
