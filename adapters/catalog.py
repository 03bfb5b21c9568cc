"""The adapter catalogue: which bases are served and which adapters each base has, versioned.

The registry builds it; ingresses and model replicas receive it whole (it pickles across Ray actor
boundaries) and read it through the methods below, so the nested shape is written out once.
Unknown names raise ``adapters.errors.unknown_model``, the one place that words that error.
"""

from pydantic import BaseModel, ConfigDict, Field

from adapters.errors import unknown_model
from adapters.spec import AdapterKind, AdapterSpec


class BaseEntry(BaseModel):
    """One served base model and its adapters (by name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AdapterKind
    root: str = Field(description="The base weights' reference (path or hub id).")
    adapters: dict[str, AdapterSpec] = Field(default_factory=dict)


class Catalog(BaseModel):
    """A snapshot of the whole catalogue. ``version`` grows with every change (never reused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 0
    bases: dict[str, BaseEntry] = Field(default_factory=dict)

    def names(self) -> dict[str, list[str]]:
        """Base id -> its adapter names: what ``adapters.ids.resolve`` takes."""
        return {b: list(e.adapters) for b, e in self.bases.items()}

    def base(self, base: str | None) -> BaseEntry:
        if base is None or base not in self.bases:
            raise unknown_model(str(base))
        return self.bases[base]

    def adapters(self, base: str) -> dict[str, AdapterSpec]:
        """``base``'s adapters; an unknown base has none."""
        entry = self.bases.get(base)
        return dict(entry.adapters) if entry else {}

    def adapter(self, base: str, name: str) -> AdapterSpec:
        spec = self.base(base).adapters.get(name)
        if spec is None:
            raise unknown_model(f"{base}:{name}")
        return spec
