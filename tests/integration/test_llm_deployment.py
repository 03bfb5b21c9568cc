"""The LLM deployment on real Ray Serve with a fake engine (tests/fake_engine.py), reached through
a handle: the adapter lifecycle around the engine (fetch, validate, load once, evict by really
unloading), streaming, and errors that leave the replica serving. The real engines are tested
end to end in tests/e2e."""

import json
import os
import re
from pathlib import Path

import pytest
import ray
from ray import serve

from adapters.errors import AdapterLoadError, InvalidAdapterError
from serve_app.deployments.llm import LLMDeployment
from serve_app.request_errors import EngineError
from tests.bad_adapters import build_bad_adapters
from tests.fake_engine import fake_engine
from tests.ray_start import init_ray

BASE = "tiny-llama"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    from serve_app.demo.__main__ import build_all

    llm = build_all(Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")), images=False)["llm"]
    bad_root = tmp_path_factory.mktemp("bad")
    llm["bad"] = {
        case: (body, message)
        for case, body, message in build_bad_adapters(bad_root, llm["adapters"]["sql"], BASE)
    }
    llm["bad_root"] = str(bad_root)
    return llm


@pytest.fixture(scope="module")
def llm(demo, tmp_path_factory):
    init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    cfg = {"name": BASE, "model": demo["base"], "max_loras": 2, "max_cpu_loras": 2}
    sources = {
        "allowed_roots": [str(Path(demo["base"]).parents[1]), demo["bad_root"]],
        "cache_dir": str(tmp_path_factory.mktemp("cache")),
    }
    app = LLMDeployment.options(name="llm", ray_actor_options={"num_cpus": 0.2}).bind(
        cfg, sources, None, fake_engine
    )
    try:
        yield serve.run(app, name="llm-it", route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def spec(demo, name: str) -> dict:
    return {"name": name, "base": BASE, "source": demo["adapters"][name]}


def complete(llm, body: dict, adapter: dict | None = None) -> dict:
    mid = adapter["name"] if adapter else ""
    h = llm.options(multiplexed_model_id=mid)
    return h.complete.remote("completions", body, adapter).result(timeout_s=60)


def snapshot(llm) -> dict:
    return llm.adapter_snapshot.remote().result(timeout_s=30)


def loads(snap: dict, name: str) -> int:
    return sum(1 for verb, n in snap["engine"]["calls"] if verb == "load" and n == name)


def test_an_adapter_is_loaded_once_and_named_in_the_engine_call(llm, demo):
    for _ in range(3):
        out = complete(llm, {"prompt": "hi"}, spec(demo, "sql"))
        assert out["choices"][0]["text"] == "[sql] hi"
    snap = snapshot(llm)
    assert loads(snap, "sql") == 1
    assert "sql" in snap["resident"] and "sql" in snap["engine_adapters"]


def test_the_base_model_is_served_under_its_own_name(llm):
    assert complete(llm, {"prompt": "hi"})["choices"][0]["text"] == f"[{BASE}] hi"


def test_a_full_working_set_evicts_by_really_unloading(llm, demo):
    for name in ["sql", "sql", "poet", "chef"]:  # 2 slots
        complete(llm, {"prompt": "x"}, spec(demo, name))
    snap = snapshot(llm)
    # lfu (the default): chef, requested once, evicts poet (once), not sql (more often).
    assert sorted(snap["engine_adapters"]) == sorted(snap["resident"]) == ["chef", "sql"]
    assert ["unload", "poet"] in snap["engine"]["calls"]


def test_streaming_yields_the_whole_answer_as_events(llm, demo):
    h = llm.options(multiplexed_model_id="poet", stream=True)
    items = list(h.generate.remote("completions", {"prompt": "a b", "stream": True},
                                   spec(demo, "poet")))  # fmt: skip
    assert items[0] is None  # events follow
    words = [json.loads(i[6:])["choices"][0]["text"] for i in items[1:-1]]
    assert words == ["[poet]", "a", "b"] and items[-1] == "data: [DONE]\n\n"


@pytest.mark.parametrize("case", ["rank-too-large", "wrong-base", "truncated"])
def test_a_bad_adapter_is_refused_and_the_replica_keeps_serving(llm, demo, case):
    body, message = demo["bad"][case]
    bad = {"name": f"bad-{case}", "base": BASE, **body}
    with pytest.raises((InvalidAdapterError, AdapterLoadError), match=re.escape(message)):
        complete(llm, {"prompt": "x"}, bad)
    assert complete(llm, {"prompt": "ok"}, spec(demo, "poet"))["choices"][0]["text"] == (
        "[poet] ok"
    )
    assert bad["name"] not in snapshot(llm)["engine_adapters"]


def test_an_engine_failure_is_an_engine_error_and_the_replica_keeps_serving(llm, demo):
    with pytest.raises(EngineError, match="failed, as asked"):
        complete(llm, {"prompt": "fail"}, spec(demo, "chef"))
    assert complete(llm, {"prompt": "ok"}, spec(demo, "chef"))["choices"][0]["text"] == (
        "[chef] ok"
    )
    assert "chef" in snapshot(llm)["resident"]  # the failure did not unload the adapter
