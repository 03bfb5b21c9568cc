"""Who is calling and what they may use: API keys (only their sha256 is stored) whose scopes name
bases and adapters, and the admin token. Pure Python (no FastAPI, no Ray), so every entry point
(the HTTP ingress, batch jobs) checks callers the same way:

    caller = authorize(cfg.api_keys, bearer(headers.get("authorization")))
    caller.may_use("tiny-llama", "sql")

A scope is ``<base>`` (the base model alone), ``<base>:<adapter>`` (that adapter) or ``<base>:*``
(the base and every adapter on it, registered now or later). With no keys configured the server
is open: every caller may use everything.
NOTE: out-of-scope models must look exactly like models that do not exist, so callers resolve
names against ``caller.visible(catalog)``, never against the whole catalogue.
"""

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.errors import InvalidModelIdError
from adapters.ids import check_adapter_name, check_base_name
from serve_app.request_errors import UnauthorizedError

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(secret: str) -> str:
    """The stored form of a key or token."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(BaseModel):
    """One caller's key, as the config stores it: a name, the key's sha256, and its scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1, max_length=128, description="Who holds the key (logs and limits use it)."
    )
    key_sha256: str = Field(
        pattern=_SHA256_RE.pattern,
        description='sha256 hex digest of the key (python -c "import hashlib; '
        "print(hashlib.sha256(b'KEY').hexdigest())\"); the key itself is never stored.",
    )
    models: list[str] = Field(
        min_length=1,
        description="What the key may use: '<base>', '<base>:<adapter>' or '<base>:*'.",
    )

    @field_validator("models")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        for scope in v:
            base, sep, adapter = scope.partition(":")
            try:
                check_base_name(base)
                if sep and adapter != "*":
                    check_adapter_name(adapter)
            except InvalidModelIdError as e:
                raise ValueError(f"scope {scope!r}: {e}") from None
        return v


@dataclass(frozen=True)
class Caller:
    """An authorised caller. ``name`` is None on an open server (no keys configured)."""

    name: str | None
    scopes: frozenset[str] | None  # None: everything

    def may_use(self, base: str, adapter: str | None = None) -> bool:
        """Whether this caller may use ``base`` (adapter None) or ``base:adapter``."""
        if self.scopes is None:
            return True
        if f"{base}:*" in self.scopes:
            return True
        return (base if adapter is None else f"{base}:{adapter}") in self.scopes

    def visible(self, catalog: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
        """``catalog`` (base -> adapter names) cut down to what this caller may use. A base
        appears when the caller may use it or any of its adapters."""
        out: dict[str, list[str]] = {}
        for base, names in catalog.items():
            allowed = [n for n in names if self.may_use(base, n)]
            if allowed or self.may_use(base):
                out[base] = allowed
        return out


OPEN = Caller(name=None, scopes=None)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authorize(keys: Sequence[ApiKey], presented: str | None) -> Caller:
    """The caller holding ``presented`` (a bearer token); UnauthorizedError if keys are configured
    and it matches none. Compares against every key in constant time per key."""
    if not keys:
        return OPEN
    if not presented:
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
    digest = sha256_hex(presented).encode()
    found: ApiKey | None = None
    for k in keys:  # NOTE: no early exit, so the time taken does not say which key matched
        if hmac.compare_digest(digest, k.key_sha256.encode()):
            found = k
    if found is None:
        raise UnauthorizedError("invalid API key")
    return Caller(name=found.name, scopes=frozenset(found.models))


def check_admin(token_sha256: str | None, presented: str | None) -> None:
    """UnauthorizedError unless ``presented`` is the admin token (given as its sha256)."""
    if not token_sha256:
        raise UnauthorizedError(
            "admin API is disabled: set admin_token_sha256 (or LORASERVE_ADMIN_TOKEN)"
        )
    given = sha256_hex(presented or "").encode()
    if not presented or not hmac.compare_digest(given, token_sha256.encode()):
        raise UnauthorizedError("admin API: missing or wrong bearer token")
