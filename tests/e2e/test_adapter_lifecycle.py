"""Adapters at runtime over HTTP: the admin API (auth, register, list, pin, delete), eviction that
really unloads from vLLM, and every bad adapter refused at registration with its own message while
the replica keeps answering correctly."""

import shutil
import time

import pytest

from tests.bad_adapters import build_bad_adapters
from tests.e2e.conftest import BASE, llm_snapshot


def _complete(http, model: str) -> str:
    body = {"model": model, "prompt": "Hello", "max_tokens": 8, "temperature": 0}
    resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["text"]


def _copy_adapter(demo_assets, name: str, dest) -> str:
    shutil.copytree(demo_assets["llm"]["adapters"][name], dest)
    return str(dest)


def test_admin_api_requires_the_token(http):
    assert http.get("/v1/adapters").status_code == 401
    resp = http.post("/v1/adapters", json={"name": "x", "base": BASE, "source": "/tmp/x"})
    assert resp.status_code == 401
    assert "token" in resp.json()["error"]["message"]
    wrong = http.delete("/v1/adapters/sql", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_register_use_pin_evict_delete(http, admin, demo_assets, tmp_path):
    # Register a copy of "poet" under a new name: servable at once, listed, same output as poet.
    source = _copy_adapter(demo_assets, "poet", tmp_path / "rt-poet")
    resp = admin.post("/v1/adapters", json={"name": "rt-poet", "base": BASE, "source": source})
    assert resp.status_code == 201, resp.text
    assert resp.json()["rank"] == 8 and resp.json()["size_bytes"] > 0
    # Sources are for the admin only (issue 14): the admin listing shows them.
    assert f"{BASE}:rt-poet" in {m["id"] for m in http.get("/v1/models").json()["data"]}
    listed = {a["id"]: a for a in admin.get("/v1/adapters").json()["data"]}
    assert listed[f"{BASE}:rt-poet"]["source"] == source
    assert _complete(http, f"{BASE}:rt-poet") == _complete(http, f"{BASE}:poet")
    dup = admin.post("/v1/adapters", json={"name": "rt-poet", "base": BASE, "source": source})
    assert dup.status_code == 409

    assert admin.post("/v1/adapters/rt-poet/pin").json()["pinned"] is True
    _wait(lambda: "rt-poet" in llm_snapshot()["pinned"])

    # Fill the working set (4 slots) past capacity with other adapters.
    extra = []
    for i, src in enumerate(["sql", "chef"]):
        name = f"rt-{i}"
        path = _copy_adapter(demo_assets, src, tmp_path / name)
        assert admin.post(
            "/v1/adapters", json={"name": name, "base": BASE, "source": path}
        ).is_success
        extra.append(name)
    order = ["sql", "chef", "pirate", "poet", *extra]
    for name in order:
        _complete(http, name)
    snap = llm_snapshot()
    assert len(snap["resident"]) <= 4
    assert "rt-poet" in snap["resident"], "the pinned adapter was evicted"
    # Least recently used went first; the most recent ones stay.
    assert "sql" not in snap["resident"] and "chef" not in snap["resident"]
    assert set(extra) <= set(snap["resident"])
    assert snap["evictions"] >= 2
    # Evicted from vLLM itself, not only from our bookkeeping.
    assert sorted(snap["engine_adapters"]) == sorted(snap["resident"])
    listed = {a["id"]: a for a in admin.get("/v1/adapters").json()["data"]}
    replica_states = listed[f"{BASE}:rt-poet"]["replicas"]
    assert list(replica_states.values()) == ["ready"]

    # Delete: 404 at once, and unloaded from the engine shortly after.
    assert admin.delete("/v1/adapters/rt-poet").json()["deleted"] is True
    gone = http.post("/v1/completions", json={"model": f"{BASE}:rt-poet", "prompt": "x"})
    assert gone.status_code == 404
    _wait(lambda: "rt-poet" not in llm_snapshot()["engine_adapters"])
    assert f"{BASE}:rt-poet" not in {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert admin.delete("/v1/adapters/rt-poet").status_code == 404
    for name in extra:
        assert admin.delete(f"/v1/adapters/{name}").is_success


def test_register_unknown_base_and_bad_name(admin, tmp_path):
    resp = admin.post("/v1/adapters", json={"name": "x", "base": "nobase", "source": "/tmp/x"})
    assert resp.status_code == 404 and "nobase" in resp.json()["error"]["message"]
    resp = admin.post("/v1/adapters", json={"name": "../evil", "base": BASE, "source": "/tmp/x"})
    assert resp.status_code == 400 and "name" in resp.json()["error"]["message"]


@pytest.fixture(scope="module")
def bad_cases(demo_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-adapters")
    return build_bad_adapters(root, demo_assets["llm"]["adapters"]["sql"], BASE)


def test_bad_adapters_refused_at_registration(http, admin, bad_cases):
    assert len(bad_cases) >= 15
    expected = _complete(http, "sql")
    messages = set()
    for i, (case, fragment, message) in enumerate(bad_cases):
        body = {"name": f"bad-{i}", "base": BASE, **fragment}
        resp = admin.post("/v1/adapters", json=body)
        assert 400 <= resp.status_code < 500, (case, resp.status_code, resp.text)
        got = resp.json()["error"]["message"]
        assert message in got, (case, got)
        messages.add(got)
        assert f"{BASE}:bad-{i}" not in {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert len(messages) == len(bad_cases), "each rule should say what was wrong in its own words"
    # The replica still answers, with the same output as before.
    assert _complete(http, "sql") == expected


def _wait(cond, timeout_s: float = 20.0) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(0.25)
