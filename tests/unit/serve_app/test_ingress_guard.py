"""The ingress's Host allow-list (DNS rebinding) and /docs switch, on ASGI scopes (no Ray)."""

import pytest

from serve_app import errors, ingress


def _scope(host: str | None, server: str = "127.0.0.1", path: str = "/v1/models") -> dict:
    headers = [(b"host", host.encode())] if host is not None else []
    return {"type": "http", "path": path, "headers": headers, "server": (server, 8000)}


@pytest.fixture(autouse=True)
def _defaults():
    saved = dict(ingress._guard_cfg)
    yield
    ingress._guard_cfg.update(saved)


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"])
def test_loopback_names_pass_on_a_loopback_server(host):
    assert ingress._refusal(_scope(host)) is None


@pytest.mark.parametrize(
    "host", ["evil.example", "localhost.evil.example:8000", "127.0.0.1.nip.io", "", None]
)
def test_other_hosts_are_421_on_a_loopback_server(host):
    refusal = ingress._refusal(_scope(host))
    assert isinstance(refusal, errors.MisdirectedRequestError)
    assert errors.to_http(refusal)[0] == 421


def test_any_host_passes_on_a_public_bind_unless_a_list_is_configured():
    assert ingress._refusal(_scope("api.example.com", server="10.0.0.5")) is None
    ingress._guard_cfg["allowed_hosts"] = ["api.example.com"]
    assert ingress._refusal(_scope("api.example.com:443", server="10.0.0.5")) is None
    assert ingress._refusal(_scope("evil.example", server="10.0.0.5")) is not None
    ingress._guard_cfg["allowed_hosts"] = ["*"]
    assert ingress._refusal(_scope("evil.example")) is None


def test_docs_can_be_switched_off():
    assert ingress._refusal(_scope("localhost", path="/openapi.json")) is None
    ingress._guard_cfg["docs"] = False
    for path in ("/docs", "/openapi.json", "/redoc"):
        refusal = ingress._refusal(_scope("localhost", path=path))
        assert errors.to_http(refusal)[0] == 404
    prefixed = {**_scope("localhost", path="/secure/docs"), "root_path": "/secure"}
    assert ingress._refusal(prefixed) is not None
    assert ingress._refusal(_scope("localhost", path="/v1/models")) is None
