"""API keys and scopes (serve_app/auth.py) and request limits (serve_app/limits.py), no Ray."""

import json

import pytest
from pydantic import ValidationError

from serve_app import auth, limits
from serve_app.config import AppConfig
from serve_app.errors import to_http
from serve_app.request_errors import InvalidRequestError, RateLimitError, UnauthorizedError

KEY_A, KEY_B = "sk-tenant-a-0123456789", "sk-tenant-b-9876543210"
KEYS = [
    auth.ApiKey(name="a", key_sha256=auth.sha256_hex(KEY_A), models=["llm:sql", "sd:*"]),
    auth.ApiKey(name="b", key_sha256=auth.sha256_hex(KEY_B), models=["llm"]),
]
CATALOG = {"llm": ["sql", "poet"], "sd": ["style"], "other": ["x"]}


def test_no_keys_is_open():
    caller = auth.authorize([], None)
    assert caller.name is None and caller.may_use("anything", "at-all")


@pytest.mark.parametrize("presented", [None, "", "sk-wrong", KEY_A + "x", KEY_A.upper()])
def test_missing_or_wrong_key_is_401(presented):
    with pytest.raises(UnauthorizedError) as info:
        auth.authorize(KEYS, presented)
    assert to_http(info.value)[0] == 401
    assert (
        KEY_A not in str(info.value) and (presented or "") not in str(info.value) or not presented
    )


def test_scopes():
    a, b = auth.authorize(KEYS, KEY_A), auth.authorize(KEYS, KEY_B)
    assert a.name == "a" and b.name == "b"
    assert a.may_use("llm", "sql") and not a.may_use("llm", "poet") and not a.may_use("llm")
    assert a.may_use("sd") and a.may_use("sd", "style") and a.may_use("sd", "added-later")
    assert b.may_use("llm") and not b.may_use("llm", "sql") and not b.may_use("sd")
    assert a.visible(CATALOG) == {"llm": ["sql"], "sd": ["style"]}
    assert b.visible(CATALOG) == {"llm": []}


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None),
     (None, None), ("abc", None)],
)  # fmt: skip
def test_bearer(header, token):
    assert auth.bearer(header) == token


def test_admin_token_kept_as_hash_only():
    cfg = AppConfig(admin_token="s3cret-admin")
    dumped = json.dumps(cfg.model_dump(mode="json"))
    assert "s3cret-admin" not in dumped and cfg.admin_token_sha256 == auth.sha256_hex(
        "s3cret-admin"
    )
    again = AppConfig.model_validate(cfg.model_dump(mode="json"))
    auth.check_admin(again.admin_token_sha256, "s3cret-admin")
    for wrong in (None, "", "s3cret-admin "):
        with pytest.raises(UnauthorizedError):
            auth.check_admin(again.admin_token_sha256, wrong)
    with pytest.raises(UnauthorizedError, match="disabled"):
        auth.check_admin(None, "anything")


def test_api_keys_from_environment(monkeypatch):
    keys = [{"name": "env", "key_sha256": auth.sha256_hex("k"), "models": ["llm:*"]}]
    monkeypatch.setenv("LORASERVE_API_KEYS", json.dumps(keys))
    assert AppConfig().api_keys[0].name == "env"


@pytest.mark.parametrize(
    "key",
    [
        {"name": "x", "key_sha256": "plaintext-key", "models": ["llm"]},
        {"name": "x", "key_sha256": "a" * 64, "models": []},
        {"name": "x", "key_sha256": "a" * 64, "models": ["llm:../etc"]},
        {"name": "x", "key_sha256": "a" * 64, "models": ["llm"], "key": "plain"},
    ],
)
def test_bad_api_key_configs_are_refused(key):
    with pytest.raises(ValidationError):
        AppConfig(api_keys=[key])


def test_duplicate_key_names_are_refused():
    k = {"name": "x", "key_sha256": "a" * 64, "models": ["llm"]}
    with pytest.raises(ValidationError, match="duplicate API key names"):
        AppConfig(api_keys=[k, k])


# ---- limits -------------------------------------------------------------------------------

L = limits.Limits()


def test_json_depth_and_surrogates():
    deep: list = []
    node = deep
    for _ in range(40):
        node.append([])
        node = node[0]
    with pytest.raises(InvalidRequestError, match="nested deeper than 32"):
        limits.check_json({"x": deep}, 32)
    limits.check_json({"x": [[["fine"]]], "é": "ünïcødé 🦊"}, 32)
    with pytest.raises(InvalidRequestError, match="surrogate"):
        limits.check_json(json.loads('{"prompt": "\\ud800"}'), 32)
    with pytest.raises(InvalidRequestError, match="surrogate"):
        limits.check_json(json.loads('{"\\udfff": 1}'), 32)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": 10**9}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5000},
         "max_completion_tokens"),
        ({"prompt": "x", "n": 100}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "best_of": 9}, "best_of"),
        ({"prompt": "x", "priority": -1}, "priority"),  # would run before everyone else's
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logprobs": -1}, "logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": -1}, "top_logprobs"),
        ({"prompt": "x", "prompt_logprobs": 10**6}, "prompt_logprobs"),
        ({"prompt": "x", "stop": ["s"] * 17}, "stop"),
        ({"prompt": "x", "stop": "s" * 257}, "stop"),
        ({"prompt": "x", "stop_token_ids": list(range(100))}, "stop_token_ids"),
        ({"prompt": "x", "logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"prompt": "x" * 200_001}, "prompt"),
        ({"prompt": ["x"] * 33}, "prompt"),
        ({"prompt": list(range(40_000))}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", []]}, "prompt"),
    ],
)  # fmt: skip
def test_text_limits_name_the_field(body, param):
    kind = "chat" if "messages" in body else "completions"
    with pytest.raises(InvalidRequestError) as info:
        limits.check_text_request(kind, body, L)
    assert info.value.param == param and to_http(info.value)[0] == 400


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x", "max_tokens": 4096, "n": 8, "logprobs": 5, "stop": ["a", "b"]},
        {"prompt": "x", "priority": 3},  # a caller may put its own requests after others
        {"prompt": [1, 2, 3]},
        {"prompt": ["a", "b"], "max_tokens": "many"},  # wrong types: the engine's own 400
        {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 3},
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "1"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    ],
)
def test_requests_within_limits_pass(body):
    limits.check_text_request("chat" if "messages" in body else "completions", body, L)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        ([], "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"content": "x"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": 7}], "messages[0].content"),
        ([{"role": "user", "content": "a"}, {"role": "assistant"}], "messages[1].content"),
        ([{"role": "user", "content": ["text"]}], "messages[0].content"),
    ],
)
def test_chat_messages_follow_openai_rules(messages, param):
    with pytest.raises(InvalidRequestError) as info:
        limits.check_text_request("chat", {"messages": messages}, L)
    assert info.value.param == param


def test_in_flight_per_key():
    f = limits.InFlight(limit=2, retry_after_s=3)
    f.acquire("a")
    with f.hold("a"):
        with pytest.raises(RateLimitError) as info:
            f.acquire("a")
        f.acquire("b")  # other keys are counted apart
    status, _ = to_http(info.value)
    assert status == 429 and info.value.retry_after_s == 3
    f.acquire("a")  # the held slot came back
    assert f.counts == {"a": 2, "b": 1}
    for _ in range(10):
        f.acquire(None)  # an open server: callers have no identity to count under
    assert f.counts == {"a": 2, "b": 1}


def test_callers_see_adapter_failures_without_paths_or_sources():
    from adapters import errors as ae
    from serve_app.errors import for_caller

    src = ae.AdapterSourceError("adapter 'sql': source path '/srv/secret/sql' does not exist")
    load = ae.AdapterLoadError("adapter 'x': vLLM refused it: no file at /srv/x/adapter.bin")
    shown = [for_caller(src), for_caller(load)]
    assert [type(e) for e in shown] == [ae.AdapterSourceError, ae.AdapterLoadError]
    assert [to_http(e)[0] for e in shown] == [422, 422]
    assert all("/srv" not in str(e) for e in shown)
    assert str(shown[0]) == "adapter 'sql' is unavailable: its source could not be read"
    rule = ae.InvalidAdapterError("adapter 'y': rank 64 exceeds this deployment's max_lora_rank")
    assert for_caller(rule) is rule  # validation rules name files, not paths: kept
