"""Issue 14 on the real app: API keys scope what a caller may use, list and learn; the admin API
refuses without its token; a catalogue of hostile requests gets documented 4xx answers and never a
5xx; hostile adapter regexes are refused at once; slow bodies do not stop other callers; no log
holds a key or the token.

Keys need their own ingress: this module deploys a second Serve application, "secure" at
/secure, whose only deployment is an Ingress with api_keys and short limits, bound to the package
app's own model deployments and registry (same replicas, same engines).
"""

import json
import resource
import secrets
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADMIN_TOKEN, BASE, REF_BASE, app_config

KEY_A = "sk-a-" + secrets.token_urlsafe(24)  # tenant A: two adapters
KEY_B = "sk-b-" + secrets.token_urlsafe(24)  # tenant B: the base model only
KEY_ALL = "sk-all-" + secrets.token_urlsafe(24)  # every text and image model
IMAGE = "tiny-sd"
PREFIX = "/secure"
BODY_TIMEOUT_S = 3


def _key(name: str, key: str, models: list[str]) -> dict:
    import hashlib

    return {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "models": models}


@pytest.fixture(scope="module")
def secure(app_url, demo_assets) -> str:
    """Base URL of the keyed ingress (a second app on the package app's deployments)."""
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.ingress import Ingress

    cfg = app_config(demo_assets)
    cfg["api_keys"] = [
        _key("tenant-a", KEY_A, [f"{BASE}:sql", f"{BASE}:poet"]),
        _key("tenant-b", KEY_B, [BASE]),
        _key("all", KEY_ALL, [f"{BASE}:*", f"{REF_BASE}:*", f"{IMAGE}:*"]),
    ]
    cfg["limits"] = {"body_timeout_s": BODY_TIMEOUT_S}
    cfg["docs"] = False
    cfg = AppConfig.model_validate(cfg).model_dump(mode="json")  # as build_app: token -> sha256
    assert ADMIN_TOKEN not in json.dumps(cfg)

    def handle(name: str):
        return serve.get_deployment_handle(name, app_name="loraserve")

    llms = {m["name"]: handle(f"llm:{m['name']}") for m in cfg["llm"]}
    images = {m["name"]: handle(f"image:{m['name']}") for m in cfg["image"]}
    ingress = Ingress.options(name="SecureIngress").bind(
        cfg, llms, images, handle("AdapterRegistry")
    )
    serve.run(ingress, name="secure", route_prefix=PREFIX)
    url = app_url + PREFIX
    yield url
    serve.delete("secure")


def _client(url: str, key: str | None = KEY_ALL, **kw) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, timeout=60, headers=headers, **kw)


@pytest.fixture(scope="module")
def sec(secure):
    with _client(secure) as c:
        yield c


def _err(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def _completion(client: httpx.Client, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "Hello", "max_tokens": 6, "temperature": 0}
    return client.post("/v1/completions", json=body)


# ---- keys and scopes -----------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "sk-wrong", KEY_A[:-1], f"{KEY_A} {KEY_A}"])
def test_no_or_wrong_key_is_401_everywhere(secure, key):
    with _client(secure, key) as c:
        for resp in (
            c.get("/v1/models"),
            _completion(c, f"{BASE}:sql"),
            c.post("/v1/chat/completions", json={"model": BASE, "messages": []}),
            c.post("/v1/images/generations", json={"prompt": "x"}),
        ):
            err = _err(resp, 401)
            assert err["type"] == "authentication_error" and "key" in err["message"]


def test_a_key_lists_only_its_models(secure):
    for key, want in [
        (KEY_A, {f"{BASE}:sql", f"{BASE}:poet"}),
        (KEY_B, {BASE}),
    ]:
        with _client(secure, key) as c:
            cards = c.get("/v1/models").json()["data"]
        assert {m["id"] for m in cards} == want
        for card in cards:  # ids, owner and parent only: no paths, no sources
            assert set(card) == {"id", "object", "created", "owned_by", "parent"}


def test_a_key_uses_its_adapters_with_the_same_output_as_the_open_app(secure, http):
    with _client(secure, KEY_A) as c:
        mine = _completion(c, f"{BASE}:sql")
        bare = _completion(c, "sql")
    assert mine.status_code == 200, mine.text
    assert (
        mine.json()["choices"][0]["text"]
        == _completion(http, f"{BASE}:sql").json()["choices"][0]["text"]
    )
    assert bare.json()["choices"][0]["text"] == mine.json()["choices"][0]["text"]


# (out of scope, does not exist): each pair must be answered identically but for the name.
PROBES = [
    (f"{BASE}:chef", f"{BASE}:nosuch"),  # another tenant's adapter on a base the key sees
    ("chef", "nosuch"),  # bare adapter name
    (BASE, "no-such-base"),  # the base itself (tenant A holds adapters only)
    (f"{REF_BASE}:ref-sql", "no-such-base:ref-sql"),  # a base the key cannot see at all
    (REF_BASE, "no-such-base"),
]


@pytest.mark.parametrize(("hidden", "missing"), PROBES)
def test_out_of_scope_is_answered_exactly_like_a_missing_model(secure, hidden, missing):
    with _client(secure, KEY_A) as c:
        for route, body in [
            ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ]:
            a = c.post(route, json={**body, "model": hidden})
            b = c.post(route, json={**body, "model": missing})
            assert a.status_code == b.status_code == 404
            assert a.headers.get("content-type") == b.headers.get("content-type")
            assert _mask(a.text, hidden) == _mask(b.text, missing), (a.text, b.text)


def _mask(text: str, model: str) -> str:
    """The text with the model id and each of its parts replaced by placeholders."""
    text = text.replace(model, "<m>")
    for part in model.split(":"):
        text = text.replace(f"'{part}'", "'<p>'")
    return text


def test_out_of_scope_image_adapters_look_missing(secure, demo_assets):
    if "image" not in demo_assets:
        pytest.skip("no image deployment")
    with _client(secure, KEY_B) as c:  # tenant B may not use tiny-sd at all
        a = c.post("/v1/images/generations", json={"prompt": "x", "model": f"{IMAGE}:style3d"})
        b = c.post("/v1/images/generations", json={"prompt": "x", "model": f"{IMAGE}:nosuch"})
    assert a.status_code == b.status_code == 404
    assert _mask(a.text, f"{IMAGE}:style3d") == _mask(b.text, f"{IMAGE}:nosuch")


def test_probe_timing_classes(secure):
    """Report (not assert) the latency of out-of-scope vs missing names: same code path."""
    rows = {}
    with _client(secure, KEY_A) as c:
        for label, model in [("out of scope", f"{BASE}:chef"), ("missing", f"{BASE}:nosuch")]:
            times = []
            for _ in range(30):
                t = time.perf_counter()
                c.post("/v1/completions", json={"model": model, "prompt": "x"})
                times.append((time.perf_counter() - t) * 1000)
            rows[label] = (statistics.median(times), statistics.quantiles(times, n=10)[-1])
    print("\n404 latency ms (median, p90):", {k: f"{m:.1f}, {p:.1f}" for k, (m, p) in rows.items()})


def test_docs_are_configurable(secure, http):
    assert http.get("/openapi.json").status_code == 200  # the package app: docs on (default)
    with _client(secure, None) as c:
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert "switched off" in _err(c.get(path), 404)["message"]


def test_admin_api_refuses_without_its_token(secure):
    for key in (None, KEY_ALL, "e2e-admin-token-wrong"):
        with _client(secure, key) as c:
            for resp in (
                c.get("/v1/adapters"),
                c.post("/v1/adapters", json={"name": "x", "base": BASE, "source": "/tmp/x"}),
                c.delete("/v1/adapters/sql"),
                c.post("/v1/adapters/sql/pin"),
            ):
                assert "admin" in _err(resp, 401)["message"]
    with _client(secure, ADMIN_TOKEN) as c:
        assert c.get("/v1/adapters").status_code == 200


def test_per_key_concurrency_limit_is_a_429_with_retry_after(app_url, demo_assets):
    """A key holding its limit of requests in flight gets 429 + Retry-After; others do not."""
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.ingress import Ingress

    cfg = app_config(demo_assets)
    cfg["api_keys"] = [_key("a", KEY_A, [f"{BASE}:*"]), _key("b", KEY_B, [f"{BASE}:*"])]
    cfg["limits"] = {"max_concurrent_per_key": 2, "retry_after_s": 7, "body_timeout_s": 20}
    cfg = AppConfig.model_validate(cfg).model_dump(mode="json")
    llms = {BASE: serve.get_deployment_handle(f"llm:{BASE}", app_name="loraserve")}
    registry = serve.get_deployment_handle("AdapterRegistry", app_name="loraserve")
    serve.run(Ingress.options(name="LimitIngress").bind(cfg, llms, {}, registry),
              name="limited", route_prefix="/limited")  # fmt: skip
    try:
        host, port = app_url.removeprefix("http://").split(":")
        # Two requests whose bodies never finish hold tenant A's two slots.
        held = [_slow_request(host, int(port), "/limited/v1/completions", KEY_A) for _ in range(2)]
        time.sleep(1.0)
        with _client(app_url + "/limited", KEY_A) as a, _client(app_url + "/limited", KEY_B) as b:
            refused = _completion(a, BASE)
            other = _completion(b, BASE)
        for s in held:
            s.close()
        assert _err(refused, 429)["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == "7"
        assert other.status_code == 200, other.text
    finally:
        serve.delete("limited")


# ---- hostile requests ------------------------------------------------------------------------

J = {"Content-Type": "application/json"}


def _deep(n: int) -> bytes:
    return b'{"model": "tiny-llama", "prompt": ' + b"[" * n + b"]" * n + b"}"


def _text(**over) -> dict:
    return {"model": f"{BASE}:sql", "prompt": "hi", "max_tokens": 2, **over}


def _chat(**over) -> dict:
    return {"model": f"{BASE}:sql", "messages": [{"role": "user", "content": "hi"}], **over}


def _img(**over) -> dict:
    return {"model": IMAGE, "prompt": "a fox", **over}


C, CH, IM, AD = "/v1/completions", "/v1/chat/completions", "/v1/images/generations", "/v1/adapters"
# (id, method, path, request kwargs, status, text the error message must contain)
CATALOGUE = [
    # broken and odd JSON
    ("broken-json", "POST", C, {"content": b'{"model": ', "headers": J}, 400, "not valid JSON"),
    ("empty-body", "POST", C, {"content": b"", "headers": J}, 400, "not valid JSON"),
    ("json-array", "POST", C, {"json": [BASE]}, 400, "JSON object"),
    ("json-string", "POST", C, {"json": "hi"}, 400, "JSON object"),
    ("json-null", "POST", C, {"content": b"null", "headers": J}, 400, "JSON object"),
    ("nested-100k", "POST", C, {"content": _deep(100_000), "headers": J}, 400, "nested deeper"),
    ("nested-40", "POST", C, {"content": _deep(40), "headers": J}, 400, "nested deeper than 32"),
    (
        "nested-chat",
        "POST",
        CH,
        {"content": b'{"messages":' + b"[" * 5000 + b"]" * 5000 + b"}", "headers": J},
        400,
        "nested deeper",
    ),  # fmt: skip
    (
        "invalid-utf8",
        "POST",
        C,
        {"content": b'{"model": "\xff\xfe"}', "headers": J},
        400,
        "not valid JSON",
    ),  # fmt: skip
    (
        "lone-surrogate",
        "POST",
        C,
        {"content": b'{"model": "tiny-llama", "prompt": "\\ud800"}', "headers": J},
        400,
        "surrogate",
    ),  # fmt: skip
    ("surrogate-key", "POST", CH, {"content": b'{"\\udfff": 1}', "headers": J}, 400, "surrogate"),
    (
        "bom-prefixed",
        "POST",
        C,
        {"content": b"\xef\xbb\xbf{}", "headers": J},  # a BOM is tolerated, then the body is read
        400,
        "'model' must be a string",
    ),  # fmt: skip
    (
        "nan-max-tokens",
        "POST",
        C,
        {"content": b'{"model": "tiny-llama:sql", "prompt": "x", "max_tokens": NaN}', "headers": J},
        400,
        "max_tokens",
    ),  # fmt: skip
    # wrong types, huge and negative numbers
    ("model-int", "POST", C, {"json": _text(model=7)}, 400, "'model' must be a string"),
    ("model-null", "POST", C, {"json": _text(model=None)}, 400, "'model' must be a string"),
    ("model-list", "POST", CH, {"json": _chat(model=[BASE])}, 400, "'model' must be a string"),
    ("max-tokens-neg", "POST", C, {"json": _text(max_tokens=-1)}, 400, "max_tokens"),
    ("max-tokens-huge", "POST", C, {"json": _text(max_tokens=10**30)}, 400, "max_tokens"),
    ("max-tokens-float", "POST", C, {"json": _text(max_tokens=1e308)}, 400, "max_tokens"),
    ("max-tokens-str", "POST", C, {"json": _text(max_tokens="many")}, 400, "max_tokens"),
    ("n-huge", "POST", C, {"json": _text(n=1000)}, 400, "'n'"),
    ("n-negative", "POST", C, {"json": _text(n=-5)}, 400, "'n'"),
    ("best-of-huge", "POST", C, {"json": _text(best_of=100)}, 400, "best_of"),
    ("logprobs-huge", "POST", C, {"json": _text(logprobs=10_000)}, 400, "logprobs"),
    ("temperature-str", "POST", C, {"json": _text(temperature="hot")}, 400, "temperature"),
    ("temperature-neg", "POST", C, {"json": _text(temperature=-1)}, 400, "temperature"),
    ("stop-many", "POST", C, {"json": _text(stop=[f"s{i}" for i in range(1000)])}, 400, "stop"),
    ("stop-long", "POST", C, {"json": _text(stop="x" * 10_000)}, 400, "stop"),
    (
        "stop-ids-many",
        "POST",
        C,
        {"json": _text(stop_token_ids=list(range(5000)))},
        400,
        "stop_token_ids",
    ),  # fmt: skip
    ("prompt-missing", "POST", C, {"json": {"model": BASE}}, 400, "prompt"),
    ("prompt-int", "POST", C, {"json": _text(prompt=5)}, 400, "prompt"),
    ("prompt-huge", "POST", C, {"json": _text(prompt="word " * 60_000)}, 400, "prompt"),
    ("prompt-many", "POST", C, {"json": _text(prompt=["a"] * 1000)}, 400, "prompt"),
    (
        "prompt-context",
        "POST",
        C,
        {"json": _text(prompt="word " * 400)},
        400,
        "maximum context length",
    ),  # fmt: skip
    ("stream-yes", "POST", C, {"json": _text(stream="yes")}, 400, "stream"),
    # path-like, unicode and unknown model names
    ("model-traversal", "POST", C, {"json": _text(model="../../etc/passwd")}, 400, "invalid"),
    ("adapter-traversal", "POST", C, {"json": _text(model=f"{BASE}:../sql")}, 400, "invalid"),
    ("adapter-escaped", "POST", C, {"json": _text(model=f"{BASE}:%2e%2e")}, 400, "invalid"),
    ("model-absolute", "POST", C, {"json": _text(model="/etc/passwd")}, 400, "invalid"),
    ("model-long", "POST", C, {"json": _text(model="m" * 10_000)}, 400, "invalid"),
    ("model-unicode", "POST", C, {"json": _text(model="tïny-llama")}, 400, "invalid"),
    ("model-nul", "POST", C, {"json": _text(model="tiny-llama\x00")}, 400, "invalid"),
    ("model-rtl", "POST", CH, {"json": _chat(model="\u202etiny-llama")}, 400, "invalid"),
    ("model-empty", "POST", C, {"json": _text(model="")}, 400, "non-empty"),
    ("model-unknown", "POST", C, {"json": _text(model="nosuch")}, 404, "does not exist"),
    (
        "wrong-base-adapter",
        "POST",
        C,
        {"json": _text(model=f"{REF_BASE}:sql")},
        404,
        "does not exist",
    ),  # fmt: skip
    ("image-model-as-text", "POST", C, {"json": _text(model=IMAGE)}, 400, "not a text model"),
    # content types and transport
    (
        "text-plain",
        "POST",
        C,
        {"content": json.dumps(_text()), "headers": {"Content-Type": "text/plain"}},
        415,
        "Content-Type",
    ),  # fmt: skip
    ("no-content-type", "POST", C, {"content": json.dumps(_text()).encode()}, 415, "missing"),
    (
        "form-csrf",
        "POST",
        C,
        {"data": {"model": BASE, "prompt": "x"}},
        415,
        "application/x-www-form-urlencoded",
    ),  # fmt: skip
    ("multipart", "POST", CH, {"files": {"f": b"{}"}}, 415, "multipart/form-data"),
    ("20mb-declared", "POST", C, {"content": b" " * 20_000_000, "headers": J}, 413, "limit"),
    (
        "20mb-chunked",
        "POST",
        C,
        {"content": iter([b" " * 2**20] * 20), "headers": J},
        413,
        "limit",
    ),  # fmt: skip
    (
        "host-evil",
        "POST",
        C,
        {"json": _text(), "headers": {"Host": "evil.example"}},
        421,
        "evil.example",
    ),  # fmt: skip
    (
        "host-rebinding",
        "GET",
        "/v1/models",
        {"headers": {"Host": "localhost.evil.example:80"}},
        421,
        "localhost.evil.example",
    ),  # fmt: skip
    ("auth-basic", "GET", "/v1/models", {"headers": {"Authorization": "Basic eDp5"}}, 401, "key"),
    (
        "auth-huge-key",
        "GET",
        "/v1/models",
        {"headers": {"Authorization": "Bearer " + "k" * 8000}},
        401,
        "invalid API key",
    ),  # fmt: skip
    ("wrong-method", "POST", "/v1/models", {"json": {}}, 405, "Method Not Allowed"),
    ("no-such-route", "GET", "/v1/nothing", {}, 404, "Not Found"),
    # chat roles and contents
    ("chat-string", "POST", CH, {"json": _chat(messages="hi")}, 400, "messages"),
    ("chat-empty", "POST", CH, {"json": _chat(messages=[])}, 400, "messages"),
    (
        "chat-role-unknown",
        "POST",
        CH,
        {"json": _chat(messages=[{"role": "wizard", "content": "x"}])},
        400,
        "messages[0].role",
    ),  # fmt: skip
    ("chat-role-missing", "POST", CH, {"json": _chat(messages=[{"content": "x"}])}, 400, "role"),
    (
        "chat-no-content",
        "POST",
        CH,
        {"json": _chat(messages=[{"role": "user"}])},
        400,
        "messages[0].content",
    ),  # fmt: skip
    (
        "chat-null-content",
        "POST",
        CH,
        {"json": _chat(messages=[{"role": "user", "content": None}])},
        400,
        "content",
    ),  # fmt: skip
    (
        "chat-int-content",
        "POST",
        CH,
        {"json": _chat(messages=[{"role": "user", "content": 7}])},
        400,
        "content",
    ),  # fmt: skip
    ("chat-not-object", "POST", CH, {"json": _chat(messages=["hi"])}, 400, "messages[0]"),
    (
        "chat-too-many",
        "POST",
        CH,
        {"json": _chat(messages=[{"role": "user", "content": "x"}] * 1000)},
        400,
        "messages",
    ),  # fmt: skip
    ("chat-top-logprobs", "POST", CH, {"json": _chat(top_logprobs=-1)}, 400, "top_logprobs"),
    (
        "chat-max-completion",
        "POST",
        CH,
        {"json": _chat(max_completion_tokens=10**9)},
        400,
        "max_completion_tokens",
    ),  # fmt: skip
    # images: sizes, steps, n, mix, weights
    ("img-no-prompt", "POST", IM, {"json": {"model": IMAGE}}, 400, "prompt"),
    ("img-n-huge", "POST", IM, {"json": _img(n=100)}, 400, "'n'"),
    ("img-size-huge", "POST", IM, {"json": _img(size="100000x100000")}, 400, "size"),
    ("img-size-neg", "POST", IM, {"json": _img(size="-8x8")}, 400, "size"),
    ("img-size-odd", "POST", IM, {"json": _img(size="33x33")}, 400, "size"),
    ("img-steps-huge", "POST", IM, {"json": _img(num_inference_steps=10_000)}, 400, "steps"),
    (
        "img-weight-huge",
        "POST",
        IM,
        {"json": _img(adapters=[{"name": "style3d", "weight": 100}])},
        400,
        "weight",
    ),  # fmt: skip
    (
        "img-weight-nan",
        "POST",
        IM,
        {
            "content": b'{"model": "tiny-sd", "prompt": "x", "adapters": '
            b'[{"name": "style3d", "weight": NaN}]}',
            "headers": J,
        },
        400,
        "weight",
    ),  # fmt: skip
    (
        "img-mix-too-big",
        "POST",
        IM,
        {"json": _img(adapters=[{"name": n} for n in ["style3d", "cereal", "pixel", "sketch"]])},
        400,
        "at most 3",
    ),  # fmt: skip
    (
        "img-adapter-path",
        "POST",
        IM,
        {"json": _img(adapters=[{"name": "../style3d"}])},
        400,
        "invalid adapter name",
    ),  # fmt: skip
    (
        "img-text-adapter",
        "POST",
        IM,
        {"json": _img(adapters=[{"name": "sql"}])},
        404,
        "does not exist",
    ),  # fmt: skip
    ("img-text-model", "POST", IM, {"json": _img(model=BASE)}, 400, "not a image model"),
    ("img-seed-neg", "POST", IM, {"json": _img(seed=-1)}, 400, "seed"),
    ("img-guidance-huge", "POST", IM, {"json": _img(guidance_scale=1e9)}, 400, "guidance_scale"),
    ("img-url-format", "POST", IM, {"json": _img(response_format="url")}, 400, "response_format"),
    ("img-unknown-field", "POST", IM, {"json": _img(strength=0.5)}, 400, "strength"),
    # admin API (with the admin token)
    (
        "adm-outside-roots",
        "POST",
        AD,
        {"json": {"name": "h1", "base": BASE, "source": "/etc"}, "admin": True},
        422,
        "outside the allowed roots",
    ),  # fmt: skip
    (
        "adm-name-path",
        "POST",
        AD,
        {"json": {"name": "../../x", "base": BASE, "source": "/tmp/x"}, "admin": True},
        400,
        "invalid adapter name",
    ),  # fmt: skip
    (
        "adm-unknown-base",
        "POST",
        AD,
        {"json": {"name": "h2", "base": "nosuch", "source": "/tmp"}, "admin": True},
        404,
        "does not exist",
    ),  # fmt: skip
    (
        "adm-hf-traversal",
        "POST",
        AD,
        {"json": {"name": "h3", "base": BASE, "source": "hf://../x"}, "admin": True},
        422,
        "'..' segments",
    ),  # fmt: skip
    (
        "adm-file-host",
        "POST",
        AD,
        {"json": {"name": "h4", "base": BASE, "source": "file://evil/x"}, "admin": True},
        422,
        "take no host",
    ),  # fmt: skip
    (
        "adm-extra-field",
        "POST",
        AD,
        {"json": {"name": "h5", "base": BASE, "source": "/tmp", "exec": "rm"}, "admin": True},
        400,
        "exec",
    ),  # fmt: skip
    (
        "adm-bad-sha",
        "POST",
        AD,
        {"json": {"name": "h6", "base": BASE, "source": "/tmp", "sha256": "zz"}, "admin": True},
        400,
        "sha256",
    ),  # fmt: skip
    (
        "adm-text-plain",
        "POST",
        AD,
        {"content": b"{}", "headers": {"Content-Type": "text/plain"}, "admin": True},
        415,
        "Content-Type",
    ),  # fmt: skip
    ("adm-delete-missing", "DELETE", AD + "/nosuch", {"admin": True}, 404, "does not exist"),
    ("adm-delete-traversal", "DELETE", AD + "/..%2F..%2Fetc", {"admin": True}, 404, "Not Found"),
    ("adm-pin-base", "POST", AD + f"/{BASE}/pin", {"admin": True}, 400, "base model"),
    ("adm-no-token", "DELETE", AD + "/sql", {"key": None}, 401, "admin"),
]


def test_the_catalogue_is_large_and_covers_every_endpoint():
    assert len(CATALOGUE) >= 60 and len({c[0] for c in CATALOGUE}) == len(CATALOGUE)
    assert {c[2].split("/")[2] for c in CATALOGUE} >= {"completions", "chat", "images",
                                                       "adapters", "models", "nothing"}  # fmt: skip


@pytest.mark.parametrize(
    ("case", "method", "path", "kw", "status", "text"), CATALOGUE, ids=[c[0] for c in CATALOGUE]
)
def test_hostile_request(secure, demo_assets, case, method, path, kw, status, text):
    if path == IM and "image" not in demo_assets:
        pytest.skip("no image deployment")
    kw = dict(kw)
    key = ADMIN_TOKEN if kw.pop("admin", False) else kw.pop("key", KEY_ALL)
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **kw.pop("headers", {})}
    with httpx.Client(base_url=secure, timeout=60) as c:
        resp = c.request(method, path, headers=headers, **kw)
    err = _err(resp, status)
    assert text in err["message"], err["message"]


def test_slow_body_is_a_408_and_a_normal_request_still_works_after_the_catalogue(secure, sec):
    host, port = secure.removeprefix("http://").split("/")[0].split(":")
    s = _slow_request(host, int(port), PREFIX + C, KEY_ALL)
    t = time.perf_counter()
    reply = _reply(s)
    waited = time.perf_counter() - t
    s.close()
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert "did not arrive within" in reply and BODY_TIMEOUT_S - 1 < waited < BODY_TIMEOUT_S + 10
    resp = _completion(sec, f"{BASE}:sql")
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"]


def _reply(s: socket.socket) -> str:
    """What the server sends until it closes or pauses 2 s after the first byte."""
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        s.settimeout(2)
    return data.decode(errors="replace")


def _slow_request(host: str, port: int, path: str, key: str | None) -> socket.socket:
    """A POST whose headers promise 1,000 body bytes and whose body stops after 9."""
    s = socket.create_connection((host, port), timeout=60)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Content-Type: application/json"
        '\r\nContent-Length: 1000\r\n\r\n{"model":'.encode()
    )
    return s


# ---- hostile adapters, slow clients ---------------------------------------------------------


def test_hostile_regex_adapter_is_refused_at_once_while_others_keep_their_latency(
    admin, http, demo_assets, tmp_path
):
    src = Path(demo_assets["llm"]["adapters"]["poet"])
    path = shutil.copytree(src, tmp_path / "hostile-re")
    config = json.loads((path / "adapter_config.json").read_text())
    config["target_modules"] = r"(\w|\w)*\.X"
    config["rank_pattern"] = {r"(\w|\w)*\.X": 8}
    (path / "adapter_config.json").write_text(json.dumps(config))

    def latencies(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            assert _completion(http, f"{BASE}:poet").status_code == 200
            out.append((time.perf_counter() - t) * 1000)
        return out

    before = latencies(8)
    during: list[float] = []
    worker = threading.Thread(target=lambda: during.extend(latencies(8)))
    worker.start()
    t = time.perf_counter()
    resp = admin.post("/v1/adapters", json={"name": "hostile-re", "base": BASE,
                                            "source": str(path)})  # fmt: skip
    refused_s = time.perf_counter() - t
    worker.join()
    err = _err(resp, 422)
    assert "regex" in err["message"] and "hostile-re" in err["message"]
    assert str(tmp_path) not in err["message"]  # names the adapter, not the server path
    print(
        f"\nhostile regex refused in {refused_s * 1000:.0f} ms; other client's completion "
        f"latency ms median before {statistics.median(before):.0f}, during "
        f"{statistics.median(during):.0f} (max {max(during):.0f})"
    )
    assert "hostile-re" not in {a["id"].split(":")[-1] for a in admin.get(AD).json()["data"]}


def test_a_thousand_slow_bodies_do_not_stop_a_normal_request(app_url, http):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    host, port = app_url.removeprefix("http://").split(":")
    baseline = _timed_completion(http)
    socks = []
    try:
        t = time.perf_counter()
        for _ in range(1000):
            socks.append(_slow_request(host, int(port), C, None))
        opened_s = time.perf_counter() - t
        time.sleep(2.0)  # let the proxy hand them all to the ingress
        during = [_timed_completion(http) for _ in range(3)]
    finally:
        for s in socks:
            s.close()
    after = _timed_completion(http)
    print(
        f"\n1000 slow bodies opened in {opened_s:.1f} s; completion ms: before {baseline:.0f}, "
        f"during {', '.join(f'{d:.0f}' for d in during)}, after {after:.0f}"
    )


def _timed_completion(http: httpx.Client) -> float:
    t = time.perf_counter()
    resp = _completion(http, f"{BASE}:sql")
    assert resp.status_code == 200, resp.text
    return (time.perf_counter() - t) * 1000


# ---- no secrets anywhere ---------------------------------------------------------------------


def test_no_log_holds_a_key_or_the_admin_token(secure, sec):
    """Last: after every request above (keys right, wrong, admin calls, errors), grep every file
    of this Ray session's logs, and what the Serve status API shows, for the secrets."""
    import ray
    from ray import serve

    with _client(secure, KEY_A + "x") as c:
        c.get("/v1/models")  # a wrong key, once more
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    secrets_ = [KEY_A, KEY_B, KEY_ALL, ADMIN_TOKEN]
    files, found = 0, []
    for f in logs.rglob("*"):
        if f.is_file():
            files += 1
            data = f.read_bytes()
            found += [(f.name, s[:8]) for s in secrets_ if s.encode() in data]
    assert files > 10 and not found, found
    status = str(serve.status())
    assert not [s for s in secrets_ if s in status]
    print(f"\nsecrets grep: {files} log files, 0 hits")
