"""A text engine with the real protocol (``serve_app.engines.base.TextEngine``) and no model: it
answers ``[<model>] <prompt>`` at once, records every call, and can be told to fail or to be slow.
For integration tests of the LLM deployment and unit tests of the ingress; the serving path's
evidence stays with the real engines in tests/e2e.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from adapters.errors import AdapterLoadError
from adapters.validate import BaseModelInfo
from serve_app.config import LLMConfig
from serve_app.request_errors import EngineError


class FakeTextEngine:
    def __init__(self, cfg: LLMConfig, delay_s: float = 0.0) -> None:
        self.cfg, self.delay_s = cfg, delay_s
        self.adapters: dict[str, str] = {}  # name -> path
        self.calls: list[tuple[str, str]] = []  # (verb, adapter or model)
        self.refuse: set[str] = set()  # adapter names load_adapter refuses
        self._info: BaseModelInfo | None = None

    async def start(self) -> None:
        self.calls.append(("start", self.cfg.name))

    def base_info(self) -> BaseModelInfo:
        from serve_app.engines.text_base_info import text_base_info

        if self._info is None:
            self._info = text_base_info(self.cfg.name, self.cfg.model, tuple(self.cfg.base_aliases))
        return self._info

    async def load_adapter(self, name: str, path: str, weight_name: str | None = None) -> None:
        self.calls.append(("load", name))
        if name in self.refuse:
            raise AdapterLoadError(f"adapter '{name}': the fake engine refused it")
        self.adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload", name))
        self.adapters.pop(name, None)

    async def engine_adapters(self) -> list[str]:
        return sorted(self.adapters)

    async def completions(self, body: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        return await self._answer("text_completion", body, str(body.get("prompt", "")))

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        last = (body.get("messages") or [{}])[-1].get("content", "")
        return await self._answer("chat.completion", body, str(last))

    async def _answer(self, obj: str, body: dict[str, Any], prompt: str) -> Any:
        model = body["model"]
        if model != self.cfg.name and model not in self.adapters:
            raise EngineError(f"the fake engine has no adapter '{model}'")  # a routing bug
        self.calls.append(("generate", model))
        if prompt == "fail":
            raise EngineError("the fake engine failed, as asked")
        await asyncio.sleep(self.delay_s)
        text = f"[{model}] {prompt}"
        if body.get("stream") is True:
            return _stream(obj, model, text)
        choice = {"index": 0, "finish_reason": "stop"}
        if obj == "chat.completion":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": "fake-1", "object": obj, "created": int(time.time()), "model": model,
                "choices": [choice]}  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return {"calls": [list(c) for c in self.calls]}

    async def shutdown(self) -> None:
        self.calls.append(("shutdown", self.cfg.name))


async def _stream(obj: str, model: str, text: str) -> AsyncIterator[str]:
    for word in text.split(" "):
        chunk = {"object": f"{obj}.chunk", "model": model, "choices": [{"index": 0, "text": word}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def fake_engine(cfg: LLMConfig) -> FakeTextEngine:
    """An ``engine_factory`` for ``LLMDeployment``."""
    return FakeTextEngine(cfg)


def slow_fake_engine(cfg: LLMConfig) -> FakeTextEngine:
    return FakeTextEngine(cfg, delay_s=0.3)
