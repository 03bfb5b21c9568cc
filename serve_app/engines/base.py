"""What an engine does, as a deployment sees it. Deployments take an engine factory as an argument
(``engine_factory=``), so integration tests pass another implementation of the same protocol.

One verb set for every engine (vLLM, Transformers+PEFT, Diffusers): ``start``, ``load_adapter``,
``unload_adapter``, ``engine_adapters``, ``stats``, ``shutdown``; text engines add ``base_info``,
``completions`` and ``chat``; image engines add ``check_adapter`` and ``generate``.

Text bodies are OpenAI request dicts whose ``model`` is already the engine-side name: the served
base id or an adapter name previously given to ``load_adapter``. Results are a response dict, or
for ``stream: true`` an async iterator of server-sent-event strings (``"data: {...}\\n\\n"``).
Engines raise domain errors (serve_app.request_errors, adapters.errors), never HTTP types, and
import nothing that knows HTTP.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.validate import BaseModelInfo

Result = dict[str, Any] | AsyncIterator[str]


class AdapterEngine(Protocol):
    """What every engine does with adapters."""

    async def start(self) -> None: ...

    async def load_adapter(self, name: str, path: str, weight_name: str | None = None) -> None:
        """Load the adapter files in ``path`` (for image LoRAs, the file ``weight_name``) as
        ``name``. A misfit raises InvalidAdapterError / AdapterLoadError, leaving nothing."""
        ...

    async def unload_adapter(self, name: str) -> None:
        """Remove the adapter from the engine so its memory comes back."""
        ...

    async def engine_adapters(self) -> list[str]:
        """Adapter names the engine itself holds (its own view, not ours)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Engine counters (JSON-able), e.g. which adapters ran together in one batch."""
        ...

    async def shutdown(self) -> None: ...


class TextEngine(AdapterEngine, Protocol):
    def base_info(self) -> BaseModelInfo:
        """Module names and shapes of the base model, for validating adapters before loading."""
        ...

    async def completions(self, body: dict[str, Any]) -> Result: ...

    async def chat(self, body: dict[str, Any]) -> Result: ...


@dataclass(frozen=True)
class ImageJob:
    """One images request as an engine runs it (the ingress parsed and checked it)."""

    prompt: str
    n: int
    width: int
    height: int
    steps: int
    guidance_scale: float | None = None  # None: the pipeline's default
    negative_prompt: str | None = None
    seed: int | None = None  # image i uses seed + i; None: random


class ImageEngine(AdapterEngine, Protocol):
    async def check_adapter(self, name: str, path: str, weight_name: str | None) -> dict:
        """Trial-load and delete again: does this LoRA fit? Returns ``{"rank", "bytes"}``."""
        ...

    async def generate(self, job: ImageJob, adapters: list[tuple[str, float]]) -> list[bytes]:
        """PNG images for ``job`` with the weighted adapter mix (empty: the base model).
        Cancelling the call stops its work (text engines: a cancelled call or a closed stream
        stops the generation)."""
        ...
