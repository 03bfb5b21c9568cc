"""Domain errors for adapters. serve_app/errors.py maps each class to an HTTP status.

Every error carries one message string (its only constructor argument) so it pickles across Ray
actor boundaries unchanged. Messages name the adapter and the rule that failed.
"""


class AdapterError(Exception):
    """Base class: something about an adapter (or a model id) is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidModelIdError(AdapterError):
    """A model/adapter id does not follow the id grammar."""


class UnknownModelError(AdapterError):
    """No base model or adapter is served under this id."""


def unknown_model(model: str, why: str | None = None) -> UnknownModelError:
    """The OpenAI-style "model not found" error (the one place it is worded); ``why`` says
    which part is missing."""
    return UnknownModelError(f"The model '{model}' does not exist{f' ({why})' if why else ''}.")


class AmbiguousModelError(AdapterError):
    """A bare adapter name that exists under more than one base."""


class AdapterExistsError(AdapterError):
    """An adapter with this name is already registered."""


class InvalidAdapterError(AdapterError):
    """The adapter's files break a validation rule (config, rank, base, shapes, format...)."""


class AdapterSourceError(AdapterError):
    """The adapter's source cannot be read (missing path, repo, object, or a bad URI)."""


class AdapterFetchTimeoutError(AdapterSourceError):
    """Fetching from the source took longer than allowed."""


class AdapterCapacityError(AdapterError):
    """A request cannot fit the working set (e.g. pinning more adapters than fit)."""


class AdapterLoadError(AdapterError):
    """The engine refused or failed to load an adapter that passed validation."""


class AdapterUnavailableError(AdapterError):
    """The server could not fetch or load the adapter for a reason of its own (engine down, out
    of memory, a disk error): not the adapter's fault; worth retrying later."""
