"""The one table that maps every domain error to an HTTP status and an OpenAI-style error body.
No FastAPI here: the ingress turns (status, body) into a response. The errors themselves live in
``adapters.errors`` and ``serve_app.request_errors``.
"""

from adapters import errors as ae
from serve_app.request_errors import (
    BodyTooLargeError,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    ReplicaUnavailableError,
    RequestTooLargeError,
    UnauthorizedError,
)

RETRY_AFTER_S = 1  # what 503 answers tell clients to wait


# Most specific classes first: the first isinstance match wins.
_TABLE: list[tuple[type[BaseException], int, str]] = [
    (UnauthorizedError, 401, "authentication_error"),
    (BodyTooLargeError, 413, "invalid_request_error"),
    (RequestTooLargeError, 400, "invalid_request_error"),
    (InvalidRequestError, 400, "invalid_request_error"),
    (ae.InvalidModelIdError, 400, "invalid_request_error"),
    (ae.AmbiguousModelError, 400, "invalid_request_error"),
    (ae.UnknownModelError, 404, "not_found_error"),
    (ae.AdapterExistsError, 409, "conflict_error"),
    (ae.AdapterCapacityError, 503, "overloaded_error"),
    (ae.AdapterUnavailableError, 503, "server_error"),
    (ae.AdapterFetchTimeoutError, 504, "adapter_source_error"),
    (ae.AdapterSourceError, 422, "adapter_source_error"),
    (ae.InvalidAdapterError, 422, "invalid_adapter_error"),
    (ae.AdapterLoadError, 422, "invalid_adapter_error"),
    (EngineUnavailableError, 503, "overloaded_error"),
    (ReplicaUnavailableError, 503, "overloaded_error"),
    (EngineError, 500, "server_error"),
]


def to_http(exc: BaseException) -> tuple[int, dict]:
    """Map an exception to (status, OpenAI-style body). Unknown exceptions become 500."""
    for cls, status, kind in _TABLE:
        if isinstance(exc, cls):
            return status, error_body(str(exc), kind, status, getattr(exc, "param", None))
    return 500, error_body(f"internal error: {type(exc).__name__}", "server_error", 500)


def headers(status: int) -> dict[str, str]:
    """HTTP headers an error answer carries: 503 says when to retry."""
    return {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}


def error_body(message: str, kind: str, status: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
