"""Errors of requests, and the one table that maps every domain error to an HTTP status and an
OpenAI-style error body. No FastAPI here: the ingress turns (status, body) into a response.
"""

from pydantic import ValidationError
from ray.exceptions import RayActorError

from adapters import errors as ae


class InvalidRequestError(Exception):
    """A request field is missing, malformed or outside a configured limit."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


def invalid_field(e: "ValidationError") -> InvalidRequestError:
    """A pydantic ValidationError as the request error that names its first bad field."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    return InvalidRequestError(f"invalid field '{field}': {err['msg']}", param=field)


class RequestTooLargeError(InvalidRequestError):
    """The request body or prompt exceeds a configured or model limit."""


class BodyTooLargeError(InvalidRequestError):
    """The HTTP request body exceeds ``max_request_bytes``."""


class UnauthorizedError(Exception):
    """Admin API called without the right bearer token."""


class EngineError(Exception):
    """The engine failed on a valid request (a bug or a resource problem, not the user's input)."""


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
    (ae.AdapterCapacityError, 409, "conflict_error"),
    (ae.AdapterFetchTimeoutError, 504, "adapter_source_error"),
    (ae.AdapterSourceError, 422, "adapter_source_error"),
    (ae.InvalidAdapterError, 422, "invalid_adapter_error"),
    (ae.AdapterLoadError, 422, "invalid_adapter_error"),
    (EngineError, 500, "server_error"),
    # The replica serving the request died or became unreachable (its node was lost): Serve
    # replaces it, so the client may retry.
    (RayActorError, 503, "service_unavailable"),
]


def to_http(exc: BaseException) -> tuple[int, dict]:
    """Map an exception to (status, OpenAI-style body). Unknown exceptions become 500."""
    for cls, status, kind in _TABLE:
        if isinstance(exc, cls):
            if cls is RayActorError:  # its text names actor ids and addresses: not for clients
                return status, error_body(
                    "the replica serving this request was lost; retry", kind, status
                )
            return status, error_body(str(exc), kind, status, getattr(exc, "param", None))
    return 500, error_body(f"internal error: {type(exc).__name__}", "server_error", 500)


def error_body(message: str, kind: str, status: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
