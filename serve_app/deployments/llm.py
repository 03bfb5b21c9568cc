"""The LLM deployment: one text engine (vLLM or Transformers+PEFT) per replica and an adapter pool
that fetches, validates, loads and evicts adapters in that engine. No FastAPI, no HTTP types:
domain errors propagate to the ingress, which maps them.

Requests arrive as (kind, OpenAI body, adapter spec or None). ``complete`` answers a non-streamed
request in one unary call; ``generate`` is an async generator whose first item is the whole
response (dict) or ``None`` meaning server-sent-event strings follow.
NOTE: the first item is produced only after the adapter is resident and the engine accepted the
request, so errors surface before the ingress commits to a status code.
"""

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve

from adapters.spec import AdapterSpec
from adapters.validate import ValidatedAdapter, ValidationRules, validate_text_lora
from serve_app.config import LLMConfig, SourceOptions
from serve_app.deployments.logs import to_replica_log
from serve_app.deployments.working_set import WorkingSet, WorkingSetMethods, make_fetcher
from serve_app.engines.base import TextEngine
from serve_app.request_errors import InvalidRequestError

logger = logging.getLogger("serve_app.llm")


def make_engine(cfg: LLMConfig) -> TextEngine:
    """The configured engine (not started). Heavy imports happen here, in the replica."""
    common = {
        "name": cfg.name,
        "model": cfg.model,
        "tokenizer": cfg.tokenizer,
        "max_model_len": cfg.max_model_len,
        "dtype": cfg.dtype,
        "base_aliases": tuple(cfg.base_aliases),
    }
    if cfg.engine == "peft":
        from serve_app.engines.peft_engine import PeftEngine

        return PeftEngine(**common)
    from serve_app.engines.vllm_engine import VLLMEngine

    return VLLMEngine(
        **common,
        max_loras=cfg.max_loras,
        max_cpu_loras=cfg.max_cpu_loras,
        max_lora_rank=cfg.max_lora_rank,
        engine_kwargs=cfg.engine_kwargs,
    )


@serve.deployment
class LLMDeployment(WorkingSetMethods):
    async def __init__(
        self,
        cfg: dict,
        sources: dict,
        registry: Any = None,
        engine_factory: Callable[[LLMConfig], TextEngine] = make_engine,
    ) -> None:
        """``engine_factory(cfg)`` builds the engine (default: vLLM or PEFT, by ``cfg.engine``)."""
        # NOTE: before vLLM is imported: its own logging setup (dictConfig) would otherwise
        # disable Serve's replica loggers, and this replica's log would go silent.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        to_replica_log("vllm")
        self.cfg = LLMConfig.model_validate(cfg)
        src = SourceOptions.model_validate(sources)
        self.rules = ValidationRules(
            max_rank=self.cfg.max_lora_rank,
            allow_pickle=src.allow_pickle,
            max_bytes=src.max_adapter_bytes,
            check_base_model=src.check_base_model,
        )
        self.fetcher = make_fetcher(src)
        self.engine = engine_factory(self.cfg)
        await self.engine.start()
        ws = await WorkingSet.start(
            base=self.cfg.name,
            prepare=self._prepare,
            load=self._load,
            unload=self.engine.unload_adapter,
            max_count=self.cfg.max_cpu_loras,
            max_bytes=self.cfg.max_resident_bytes,
            policy=self.cfg.eviction,
            registry=registry,
            fetcher=self.fetcher,
            warm_timeout_s=self.cfg.deployment.warm_timeout_s,
            hot_factor=float(self.cfg.deployment.router_knobs.get("hot_factor", 1.0)),
            pinned=[
                a.model_copy(update={"base": self.cfg.name}) for a in self.cfg.adapters if a.pinned
            ],
        )
        self.pool, self.residency, self.metrics = ws.pool, ws.residency, ws.metrics
        self.pressure, self.demand = ws.pressure, ws.demand

    async def _prepare(self, spec: AdapterSpec) -> ValidatedAdapter:
        path = await self.fetcher.fetch(spec)
        info = await asyncio.to_thread(self.engine.base_info)
        return await asyncio.to_thread(validate_text_lora, spec, path, info, self.rules)

    async def _load(self, spec: AdapterSpec, prepared: ValidatedAdapter) -> None:
        await self.engine.load_adapter(spec.name, str(prepared.path))

    async def generate(
        self, kind: str, body: dict[str, Any], spec: dict | None
    ) -> AsyncIterator[dict | str | None]:
        """Serve one completions/chat request; see the module docstring for the item protocol."""
        call = self.engine.completions if kind == "completions" else self.engine.chat
        if spec is None:
            with self.residency.request(), self._metered() as m:
                async for item in _items(await call({**body, "model": self.cfg.name})):
                    m.saw(item)
                    yield item
            return
        adapter = AdapterSpec.model_validate(spec)
        with self.residency.request(adapter.name), self._metered(adapter.name) as m:
            async with self.pool.use(adapter):
                async for item in _items(await call({**body, "model": adapter.name})):
                    m.saw(item)
                    yield item

    async def complete(self, kind: str, body: dict[str, Any], spec: dict | None) -> dict:
        """A non-streamed request as one unary call (no per-item streaming overhead)."""
        gen = self.generate(kind, body, spec)
        try:
            result = await gen.__anext__()
        finally:
            await gen.aclose()
        if result is None:  # the body asked to stream after all (e.g. "stream": "yes")
            raise InvalidRequestError("'stream' must be a boolean", param="stream")
        return result

    async def validate_adapter(self, spec: dict) -> dict:
        """Fetch and validate without loading: what registration runs before accepting."""
        prepared = await self._prepare(AdapterSpec.model_validate(spec))
        return prepared.spec.model_dump(mode="json")

    async def pin_adapter(self, spec: dict) -> None:
        await self.pool.pin(AdapterSpec.model_validate(spec))


async def _items(result: dict | AsyncIterator[str]) -> AsyncIterator[dict | str | None]:
    if isinstance(result, dict):
        yield result
        return
    yield None
    async for chunk in result:
        yield chunk
