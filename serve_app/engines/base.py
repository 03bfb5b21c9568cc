"""What a text engine does, as the LLM deployment sees it. Deployments take the engine class as an
argument, so integration tests can pass another implementation with the same protocol.

Bodies are OpenAI request dicts whose ``model`` is already the engine-side name: the served base id
or an adapter name previously given to ``load_adapter``. Results are a response dict, or for
``stream: true`` an async iterator of server-sent-event strings (``"data: {...}\\n\\n"``).
Engines raise domain errors (serve_app.errors, adapters.errors), never HTTP types.
"""

from collections.abc import AsyncIterator
from typing import Any, Protocol

from adapters.validate import BaseModelInfo

Result = dict[str, Any] | AsyncIterator[str]


class TextEngine(Protocol):
    async def start(self) -> None: ...

    def base_info(self) -> BaseModelInfo:
        """Module names and shapes of the base model, for validating adapters before loading."""
        ...

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None:
        """Remove the adapter from the engine so its memory comes back."""
        ...

    async def engine_adapters(self) -> list[str]:
        """Adapter names the engine itself holds (its own view, not ours)."""
        ...

    async def completions(self, body: dict[str, Any]) -> Result: ...

    async def chat(self, body: dict[str, Any]) -> Result: ...

    def stats(self) -> dict[str, Any]:
        """Engine counters (JSON-able), e.g. which adapters ran together in one batch."""
        ...

    async def shutdown(self) -> None: ...
