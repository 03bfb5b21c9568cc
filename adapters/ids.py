"""The one id grammar: ``<base>`` or ``<base>:<adapter>``, or a bare adapter name unique across
bases.
``parse`` checks syntax only; ``resolve`` maps an id onto what is actually served.
"""

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from adapters.errors import AmbiguousModelError, InvalidModelIdError, unknown_model

# Adapter names become file names and engine keys: keep them boring.
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Base ids may look like Hugging Face repo ids ("org/name").
BASE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


class ModelId(NamedTuple):
    base: str
    adapter: str | None

    def __str__(self) -> str:
        return self.base if self.adapter is None else f"{self.base}:{self.adapter}"


def check_adapter_name(name: str) -> str:
    """Return ``name`` if it is a valid adapter name, else raise InvalidModelIdError."""
    if not isinstance(name, str) or not ADAPTER_NAME_RE.match(name) or ".." in name:
        raise InvalidModelIdError(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, and no '..'"
        )
    return name


def check_base_name(name: str) -> str:
    if not isinstance(name, str) or not BASE_NAME_RE.match(name) or ".." in name:
        raise InvalidModelIdError(f"invalid base model name {name!r}")
    return name


def parse(model: str) -> ModelId:
    """Split ``model`` into (base, adapter); a string without ':' is returned as a base."""
    if not isinstance(model, str) or not model:
        raise InvalidModelIdError("'model' must be a non-empty string")
    base, sep, adapter = model.partition(":")
    if not sep:
        return ModelId(check_base_name(base), None)
    return ModelId(check_base_name(base), check_adapter_name(adapter))


def resolve(model: str, catalog: Mapping[str, Iterable[str]]) -> ModelId:
    """Resolve ``model`` against ``catalog`` (base id -> its adapter names).

    Accepts ``<base>``, ``<base>:<adapter>`` and a bare adapter name that is unique across bases.
    """
    mid = parse(model)
    if mid.adapter is None:
        if mid.base in catalog:
            return mid
        owners = [b for b, names in catalog.items() if mid.base in set(names)]
        if len(owners) == 1:
            return ModelId(owners[0], mid.base)
        if len(owners) > 1:
            raise AmbiguousModelError(
                f"adapter name '{model}' exists under several base models "
                f"({', '.join(sorted(owners))}): use '<base>:{model}'"
            )
        raise unknown_model(model)
    if mid.base not in catalog:
        raise unknown_model(model, f"unknown base '{mid.base}'")
    if mid.adapter not in set(catalog[mid.base]):
        raise unknown_model(model, f"no adapter '{mid.adapter}' on base '{mid.base}'")
    return mid
