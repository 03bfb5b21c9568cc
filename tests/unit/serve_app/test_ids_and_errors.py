"""The id grammar and the one table from domain errors to HTTP."""

import pickle

import pytest

from adapters import errors as ae
from adapters.ids import ModelId, parse, resolve
from serve_app import errors, request_errors

CATALOG = {"llama": ["sql", "poet", "shared"], "org/other": ["shared", "chef"]}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("llama", ModelId("llama", None)),
        ("llama:sql", ModelId("llama", "sql")),
        ("sql", ModelId("llama", "sql")),
        ("chef", ModelId("org/other", "chef")),
        ("org/other:shared", ModelId("org/other", "shared")),
    ],
)
def test_resolve(model, expected):
    assert resolve(model, CATALOG) == expected


@pytest.mark.parametrize(
    ("model", "error", "text"),
    [
        ("nobody", ae.UnknownModelError, "'nobody' does not exist"),
        ("llama:nope", ae.UnknownModelError, "no adapter 'nope'"),
        ("other:sql", ae.UnknownModelError, "unknown base 'other'"),
        ("shared", ae.AmbiguousModelError, "several base models"),
        ("llama:../x", ae.InvalidModelIdError, "invalid adapter name"),
        ("", ae.InvalidModelIdError, "non-empty"),
        ("llama:a:b", ae.InvalidModelIdError, "invalid adapter name"),
    ],
)
def test_resolve_errors(model, error, text):
    with pytest.raises(error, match=text):
        resolve(model, CATALOG)


def test_parse_does_not_need_a_catalog():
    assert parse("a/b:c") == ModelId("a/b", "c")
    assert str(ModelId("a", "b")) == "a:b"


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ae.UnknownModelError("x"), 404),
        (ae.InvalidModelIdError("x"), 400),
        (ae.InvalidAdapterError("x"), 422),
        (ae.AdapterSourceError("x"), 422),
        (ae.AdapterFetchTimeoutError("x"), 504),
        (ae.AdapterExistsError("x"), 409),
        (ae.AdapterCapacityError("x"), 503),  # issue 15: a full working set is 503, not 409
        (ae.AdapterUnavailableError("x"), 503),
        (request_errors.EngineUnavailableError("x"), 503),
        (request_errors.EngineError("x"), 500),
        (request_errors.InvalidRequestError("x", param="n"), 400),
        (request_errors.BodyTooLargeError("x"), 413),
        (request_errors.UnauthorizedError("x"), 401),
        (RuntimeError("boom"), 500),
    ],
)
def test_errors_map_to_status_and_openai_body(exc, status):
    got, body = errors.to_http(exc)
    assert got == status
    assert body["error"]["code"] == status and body["error"]["message"]
    # Domain errors cross Ray actor boundaries: they must pickle unchanged.
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc) and str(again) == str(exc)
    assert getattr(again, "param", None) == getattr(exc, "param", None)


def test_internal_errors_do_not_leak_details():
    _, body = errors.to_http(RuntimeError("secret path /etc/x"))
    assert "secret" not in body["error"]["message"]
