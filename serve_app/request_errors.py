"""Errors of requests and engines: what a caller got wrong, or what failed while serving it.

Raised by the ingress, the deployments and the engines; no HTTP here (``serve_app.errors`` maps
every class to a status). Picklable: they cross Ray actor boundaries.
"""

from pydantic import ValidationError


class InvalidRequestError(Exception):
    """A request field is missing, malformed or outside a configured limit."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


def invalid_field(e: ValidationError) -> InvalidRequestError:
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


class EngineUnavailableError(EngineError):
    """The engine cannot take the request now (overloaded, dead, restarting): retry later."""


class ReplicaUnavailableError(EngineError):
    """The replica serving the request died or is overloaded; Serve replaces it: retry later."""
