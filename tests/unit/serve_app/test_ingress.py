"""The HTTP ingress alone (no Ray cluster): its FastAPI app driven over ASGI by httpx, with the real
registry class in-process and a fake model deployment behind fake handles. What the ingress owns:
resolving ``model``, the handle call it makes, and every error as an OpenAI-style body."""

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import ray.serve

from adapters.errors import InvalidAdapterError
from serve_app import ingress
from serve_app.deployments.registry import AdapterRegistry

pytestmark = pytest.mark.anyio  # anyio's pytest plugin runs the async tests
TOKEN = "unit-admin-token"
BASES = {
    "tiny": {"kind": "text", "root": "/models/tiny",
             "adapters": [{"name": "sql", "source": "/a/sql", "base": "tiny"}]},
    "pics": {"kind": "image", "root": "/models/pics", "adapters": []},
}  # fmt: skip


class FakeLLM:
    """What the ingress calls on an LLM deployment, answering from its arguments."""

    def __init__(self) -> None:
        self.fail_with: Exception | None = None

    async def complete(self, kind: str, body: dict, spec: dict | None) -> dict:
        if self.fail_with:
            raise self.fail_with
        return {"kind": kind, "model": body["model"], "adapter": spec and spec["name"]}

    async def generate(self, kind: str, body: dict, spec: dict | None):
        if self.fail_with:
            raise self.fail_with
        yield None
        yield f"data: {json.dumps({'adapter': spec and spec['name']})}\n\n"
        yield "data: [DONE]\n\n"

    async def validate_adapter(self, spec: dict) -> dict:
        return {**spec, "rank": 8}

    async def adapter_snapshot(self) -> dict:
        return {"replica": "r0", "states": {"sql": "ready"}}


class FakeHandle:
    """A deployment handle calling ``target``'s methods in-process, recording the options."""

    def __init__(self, target: Any, calls: list, opts: dict | None = None) -> None:
        self.target, self.calls, self.opts = target, calls, opts or {}

    def options(self, **kw: Any) -> "FakeHandle":
        return FakeHandle(self.target, self.calls, {**self.opts, **kw})

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)

        def remote(*args: Any) -> Any:
            self.calls.append((name, self.opts, args))
            result = method(*args)
            if hasattr(result, "__anext__"):
                return result  # a streaming call
            return _awaitable(result)

        return SimpleNamespace(remote=remote)


async def _awaitable(result: Any) -> Any:
    return await result if hasattr(result, "__await__") else result


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def setup(monkeypatch, tmp_path):
    calls: list = []
    llm = FakeLLM()
    registry = AdapterRegistry.func_or_class(BASES, str(tmp_path))  # its catalogue file
    cfg = {"admin_token": TOKEN, "max_request_bytes": 10_000,
           "llm": [{"name": "tiny", "model": "/models/tiny"}],
           "image": [{"name": "pics", "model": "/models/pics"}]}  # fmt: skip
    # The class as written (Serve's wrapper around it would also freeze the ASGI app).
    obj = ingress.Ingress.func_or_class.__mro__[1](
        cfg,
        {"tiny": FakeHandle(llm, calls)},
        {"pics": FakeHandle(object(), calls)},
        FakeHandle(registry, []),
    )
    # Serve's class-based routes find their instance through the (public) replica context.
    monkeypatch.setattr(
        ray.serve, "get_replica_context", lambda: SimpleNamespace(servable_object=obj)
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ingress.app, raise_app_exceptions=False),
        base_url="http://t",
    )
    return SimpleNamespace(client=client, calls=calls, llm=llm, obj=obj)


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


async def test_models_lists_bases_and_adapters(setup):
    data = (await setup.client.get("/v1/models")).json()["data"]
    assert {m["id"]: m["parent"] for m in data} == {"tiny": None, "tiny:sql": "tiny", "pics": None}


@pytest.mark.parametrize("model", ["tiny:sql", "sql"])
async def test_an_adapter_request_goes_to_its_base_with_the_adapter_as_model_id(setup, model):
    resp = await setup.client.post("/v1/completions", json={"model": model, "prompt": "x"})
    assert resp.status_code == 200 and resp.json()["adapter"] == "sql"
    name, opts, args = setup.calls[-1]
    assert name == "complete" and opts == {"multiplexed_model_id": "sql"}
    assert args[0] == "completions" and args[2]["source"] == "/a/sql"


@pytest.mark.parametrize(("given", "runs_at"), [(None, 1), (0, 1), (5, 5)])
async def test_batch_requests_run_after_online_ones(setup, given, runs_at):
    """Through ``call`` (batch jobs) a text request runs at least at BATCH_PRIORITY, so it waits
    behind online ones in vLLM's queue; over HTTP the caller's own priority (default 0) stays."""
    body = {"model": "tiny:sql", "prompt": "x"} | ({} if given is None else {"priority": given})
    status, _ = await setup.obj.call("/v1/completions", dict(body))
    assert status == 200 and setup.calls[-1][2][1]["priority"] == runs_at
    await setup.client.post("/v1/completions", json=body)
    assert setup.calls[-1][2][1].get("priority") == given


async def test_a_base_request_has_no_adapter(setup):
    messages = [{"role": "user", "content": "x"}]  # an empty list is a 400 (issue 14)
    resp = await setup.client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": messages}
    )
    assert resp.json() == {"kind": "chat", "model": "tiny", "adapter": None}
    assert setup.calls[-1][1] == {"multiplexed_model_id": ""}


async def test_streaming_is_server_sent_events(setup):
    body = {"model": "sql", "prompt": "x", "stream": True}
    resp = await setup.client.post("/v1/completions", json=body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text == 'data: {"adapter": "sql"}\n\ndata: [DONE]\n\n'


async def test_an_error_before_the_first_event_is_a_status_not_a_stream(setup):
    setup.llm.fail_with = InvalidAdapterError("adapter 'sql': broken")
    body = {"model": "sql", "prompt": "x", "stream": True}
    assert "broken" in _error(await setup.client.post("/v1/completions", json=body), 422)["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_back_pressure_is_503_with_retry_after(setup, stream):
    """Serve refuses a request once the deployment's caller-side queue is full
    (``max_queued_requests``): the client is told the server is overloaded and when to retry."""
    from ray.serve.exceptions import BackPressureError

    setup.llm.fail_with = BackPressureError(num_queued_requests=256, max_queued_requests=256)
    resp = await setup.client.post(
        "/v1/completions", json={"model": "sql", "prompt": "x", "stream": stream}
    )
    err = _error(resp, 503)
    assert err["type"] == "overloaded_error" and "max_queued_requests=256" in err["message"]
    assert resp.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "The model 'nope' does not exist"),
        ({"model": "tiny:nope", "prompt": "x"}, 404, "does not exist"),
        ({"model": 3, "prompt": "x"}, 400, "'model' must be a string"),
        ({"model": "pics", "prompt": "x"}, 400, "not a text model"),
    ],
)
async def test_bad_models_are_named_in_openai_errors(setup, body, status, says):
    err = _error(await setup.client.post("/v1/completions", json=body), status)
    assert says in err["message"]
    assert not setup.calls  # nothing reached a model deployment


@pytest.mark.parametrize(
    ("raw", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"prompt": "' + b"x" * 20_000 + b'"}', 413, "limit is 10000"),
    ],
)
async def test_bad_bodies_are_4xx(setup, raw, status, says):
    json_type = {"Content-Type": "application/json"}  # without it: 415 (issue 14)
    resp = await setup.client.post("/v1/completions", content=raw, headers=json_type)
    assert says in _error(resp, status)["message"]


async def test_the_admin_api_needs_the_token(setup):
    _error(await setup.client.get("/v1/adapters"), 401)
    wrong = {"Authorization": "Bearer wrong"}
    _error(await setup.client.get("/v1/adapters", headers=wrong), 401)


async def test_register_validates_on_the_deployment_then_serves_the_adapter(setup):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"name": "poet", "base": "tiny", "source": "/a/poet"}
    resp = await setup.client.post("/v1/adapters", json=body, headers=auth)
    assert resp.status_code == 201 and resp.json()["id"] == "tiny:poet"
    assert resp.json()["rank"] == 8  # what validate_adapter found
    assert any(c[0] == "validate_adapter" for c in setup.calls)
    _error(await setup.client.post("/v1/adapters", json=body, headers=auth), 409)
    resp = await setup.client.post("/v1/completions", json={"model": "poet", "prompt": "x"})
    assert resp.json()["adapter"] == "poet"
    assert (await setup.client.delete("/v1/adapters/poet", headers=auth)).json()["deleted"]
    _error(await setup.client.post("/v1/completions", json={"model": "poet", "prompt": "x"}), 404)


async def test_the_playground_page_is_served_and_uses_the_public_api(setup):
    resp = await setup.client.get("/playground")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    for route in ("/v1/models", "/v1/chat/completions", "/v1/images/generations"):
        assert route in resp.text
