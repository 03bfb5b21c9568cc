"""Bad requests get a 4xx with an OpenAI-style error body that says what was wrong, never reach an
engine, and leave the replica serving other requests."""

import pytest

from tests.e2e.conftest import BASE


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["code"] == status
    return err


@pytest.mark.parametrize(
    ("model", "named"),
    [("no-such-model", "no-such-model"), (f"{BASE}:nope", "nope"), ("ghost", "ghost")],
)
def test_unknown_model_or_adapter_is_404_naming_it(http, model, named):
    resp = http.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2})
    err = _error(resp, 404)
    assert named in err["message"] and "does not exist" in err["message"]


def test_unknown_model_with_openai_client(oai):
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "x"}])
    assert "nobody" in str(info.value)


def test_malformed_json_is_400(http):
    resp = http.post(
        "/v1/completions",
        content=b'{"model": "tiny-llama", "prompt": ',
        headers={"Content-Type": "application/json"},
    )
    assert "not valid JSON" in _error(resp, 400)["message"]


def test_non_object_json_is_400(http):
    resp = http.post("/v1/completions", json=["tiny-llama"])
    assert "JSON object" in _error(resp, 400)["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": BASE, "prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ({"model": BASE, "prompt": "hi", "max_tokens": "many"}, "max_tokens"),
        ({"model": BASE}, "prompt"),
        ({"model": BASE, "prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"model": f"{BASE}:sql", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": BASE, "prompt": "hi", "priority": -1}, "priority"),  # no queue jumping
    ],
)
def test_bad_fields_are_400_naming_the_field(http, body, field):
    err = _error(http.post("/v1/completions", json=body), 400)
    assert field in err["message"], err


def test_bad_chat_messages_are_400(http):
    err = _error(http.post("/v1/chat/completions", json={"model": BASE, "messages": "hi"}), 400)
    assert "messages" in err["message"]


def test_model_must_be_a_string(http):
    err = _error(http.post("/v1/completions", json={"model": 7, "prompt": "hi"}), 400)
    assert "model" in err["message"]


def test_prompt_longer_than_context_is_400(http):
    err = _error(
        http.post(
            "/v1/completions", json={"model": "sql", "prompt": "word " * 400, "max_tokens": 4}
        ),
        400,
    )
    assert "maximum context length" in err["message"]


def test_oversized_body_is_413(http):
    resp = http.post("/v1/completions", json={"model": BASE, "prompt": "x" * 1_200_000})
    assert "limit" in _error(resp, 413)["message"]


def test_replica_healthy_after_errors(oai, http):
    for _ in range(2):
        http.post("/v1/completions", json={"model": BASE, "prompt": "hi", "max_tokens": -5})
        http.post("/v1/completions", json={"model": f"{BASE}:nope", "prompt": "hi"})
    out = oai.completions.create(model="poet", prompt="Hello", max_tokens=5, temperature=0)
    assert out.choices[0].text
