"""Keys, limits and hostile bodies at the ingress alone (no Ray cluster): the same ASGI harness as
test_ingress.py, with api_keys configured."""

import hashlib
import json
from types import SimpleNamespace

import httpx
import pytest
import ray.serve

from serve_app import ingress
from serve_app.deployments.registry import AdapterRegistry
from tests.unit.serve_app.test_ingress import BASES, FakeHandle, FakeLLM

pytestmark = pytest.mark.anyio
KEY_A, KEY_ALL = "key-a", "key-all"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _key(name: str, key: str, models: list[str]) -> dict:
    return {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "models": models}


@pytest.fixture
def keyed(monkeypatch, tmp_path):
    calls: list = []
    registry = AdapterRegistry.func_or_class(BASES, str(tmp_path))
    cfg = {
        "llm": [{"name": "tiny", "model": "/models/tiny"}],
        "image": [{"name": "pics", "model": "/models/pics"}],
        "api_keys": [_key("a", KEY_A, ["pics"]), _key("all", KEY_ALL, ["tiny:*", "pics:*"])],
        "limits": {"max_concurrent_per_key": 1, "max_json_depth": 8},
        "max_request_bytes": 10_000,
    }
    obj = ingress.Ingress.func_or_class.__mro__[1](
        cfg, {"tiny": FakeHandle(FakeLLM(), calls)}, {"pics": FakeHandle(object(), calls)},
        FakeHandle(registry, []),
    )  # fmt: skip
    monkeypatch.setattr(
        ray.serve, "get_replica_context", lambda: SimpleNamespace(servable_object=obj)
    )
    transport = httpx.ASGITransport(app=ingress.app, raise_app_exceptions=False)

    def client(key: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers)

    return SimpleNamespace(client=client, calls=calls, obj=obj)


def _err(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]


async def test_keys_scope_listing_and_use(keyed):
    async with keyed.client(None) as anon, keyed.client(KEY_A) as a:
        assert _err(await anon.get("/v1/models"), 401)["type"] == "authentication_error"
        assert [m["id"] for m in (await a.get("/v1/models")).json()["data"]] == ["pics"]
        hidden = await a.post("/v1/completions", json={"model": "tiny:sql", "prompt": "x"})
        missing = await a.post("/v1/completions", json={"model": "tiny:nope", "prompt": "x"})
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text.replace("sql", "?") == missing.text.replace("nope", "?")
    assert not keyed.calls  # nothing reached a model deployment


async def test_in_flight_limit_per_key(keyed):
    keyed.obj.in_flight.acquire("all")  # the key's one slot is taken
    async with keyed.client(KEY_ALL) as c:
        resp = await c.post("/v1/completions", json={"model": "tiny:sql", "prompt": "x"})
    assert _err(resp, 429)["type"] == "rate_limit_error" and resp.headers["retry-after"] == "1"
    keyed.obj.in_flight.release("all")
    async with keyed.client(KEY_ALL) as c:
        ok = await c.post("/v1/completions", json={"model": "tiny:sql", "prompt": "x"})
    assert ok.status_code == 200 and keyed.obj.in_flight.counts == {}


@pytest.mark.parametrize(
    ("kw", "status", "says"),
    [
        ({"content": b"{}"}, 415, "Content-Type"),
        ({"content": b"{}", "headers": {"Content-Type": "text/plain"}}, 415, "text/plain"),
        ({"content": b'{"a":' + b"[" * 50 + b"]" * 50 + b"}", "headers": JSON}, 400,
         "deeper than 8"),
        ({"content": b'{"a":' + b"[" * 9000 + b"]" * 9000 + b"}", "headers": JSON}, 413,
         "limit"),
        ({"content": b'{"a":' + b"[" * 4000 + b"]" * 4000 + b"}", "headers": JSON}, 400,
         "deeper than 8"),
        ({"content": b'{"model": "\\ud800"}', "headers": JSON}, 400, "surrogate"),
        ({"content": b"{}", "headers": {**JSON, "Content-Length": "99999999"}}, 413, "99999999"),
        ({"json": {"model": "tiny:sql", "prompt": "x", "n": 100}}, 400, "'n'"),
        ({"json": {"model": "tiny:sql", "messages": [{"role": "x"}]}}, 400, "role"),
    ],
)  # fmt: skip
async def test_hostile_bodies(keyed, kw, status, says):
    route = (
        "/v1/chat/completions" if "messages" in json.dumps(kw.get("json")) else "/v1/completions"
    )
    async with keyed.client(KEY_ALL) as c:
        resp = await c.post(route, **kw)
    assert says in _err(resp, status)["message"]


async def test_batch_calls_check_the_key_like_http(keyed):
    body = {"model": "tiny:sql", "prompt": "x"}
    assert (await keyed.obj.call("/v1/completions", body, None))[0] == 401
    assert (await keyed.obj.call("/v1/completions", body, "wrong"))[0] == 401
    hidden = await keyed.obj.call("/v1/completions", body, KEY_A)  # tenant A: pics only
    missing = await keyed.obj.call("/v1/completions", {**body, "model": "tiny:nope"}, KEY_A)
    assert hidden[0] == missing[0] == 404
    assert str(hidden[1]).replace("sql", "?") == str(missing[1]).replace("nope", "?")
    status, answer = await keyed.obj.call("/v1/completions", body, KEY_ALL)
    assert status == 200 and answer["adapter"] == "sql"
    assert (await keyed.obj.call("/v1/completions", {**body, "n": 99}, KEY_ALL))[0] == 400
