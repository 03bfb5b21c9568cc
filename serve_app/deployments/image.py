"""The image deployment: one Diffusers pipeline per replica and an adapter pool that fetches,
validates, loads and evicts LoRAs in it (eviction calls ``delete_adapters``, so memory comes back).
No FastAPI, no HTTP types: domain errors propagate to the ingress, which maps them.

Requests arrive through ``handle.options(multiplexed_model_id=...)`` with the sorted adapter names
of their mix joined by "," ("" for the base model); residency is published for the routers.
"""

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from adapters.spec import AdapterSpec
from adapters.validate import ValidationRules, validate_weight_file
from serve_app.config import ImageConfig, SourceOptions
from serve_app.deployments.logs import to_replica_log
from serve_app.deployments.working_set import WorkingSet, WorkingSetMethods, make_fetcher
from serve_app.engines.base import ImageEngine, ImageJob
from serve_app.request_errors import InvalidRequestError

logger = logging.getLogger("serve_app.image")

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what Diffusers looks for by default


@dataclass
class ImageLora:
    """A fetched and checked LoRA file; the pool's ``Prepared``."""

    path: Path  # directory holding the file
    weight_name: str
    size_bytes: int


def make_engine(cfg: ImageConfig, **options: Any) -> ImageEngine:
    """The Diffusers engine for ``cfg`` (not started); ``options`` are extra DiffusersEngine
    arguments (e.g. ``max_batch``). Heavy imports happen here, in the replica."""
    from serve_app.engines.diffusers_engine import DiffusersEngine

    return DiffusersEngine(cfg.model, dtype=cfg.dtype, **{"max_batch": cfg.max_batch, **options})


@serve.deployment
class ImageDeployment(WorkingSetMethods):
    async def __init__(
        self,
        cfg: dict,
        sources: dict,
        registry: Any = None,
        engine_options: dict | None = None,
        engine_factory: Callable[..., ImageEngine] = make_engine,
    ) -> None:
        """``engine_factory(cfg, **engine_options)`` builds the engine (default: Diffusers)."""
        to_replica_log()
        self.cfg = ImageConfig.model_validate(cfg)
        src = SourceOptions.model_validate(sources)
        self.rules = ValidationRules(
            max_rank=2**16,  # LoRA files for pipelines carry no config: the trial load checks fit
            allow_pickle=src.allow_pickle,
            max_bytes=src.max_adapter_bytes,
            check_base_model=src.check_base_model,
        )
        self.fetcher = make_fetcher(src)
        self.engine = engine_factory(self.cfg, **(engine_options or {}))
        await self.engine.start()
        ws = await WorkingSet.start(
            base=self.cfg.name,
            prepare=self._prepare,
            load=self._load,
            unload=self.engine.unload_adapter,
            max_count=self.cfg.max_adapters,
            max_bytes=self.cfg.max_resident_bytes,
            policy=self.cfg.eviction,
            registry=registry,
            fetcher=self.fetcher,
            warm_timeout_s=self.cfg.deployment.warm_timeout_s,
            hot_factor=float(self.cfg.deployment.router_knobs.get("hot_factor", 1.0)),
            pinned=[self._spec(a.model_dump()) for a in self.cfg.adapters if a.pinned],
        )
        self.pool, self.residency, self.metrics = ws.pool, ws.residency, ws.metrics
        self.pressure, self.demand = ws.pressure, ws.demand

    def _spec(self, spec: dict) -> AdapterSpec:
        s = AdapterSpec.model_validate(spec)
        return s.model_copy(
            update={"base": self.cfg.name, "weight_name": s.weight_name or DEFAULT_WEIGHT_NAME}
        )

    async def _prepare(self, spec: AdapterSpec) -> ImageLora:
        spec = self._spec(spec.model_dump())
        path = await self.fetcher.fetch(spec)
        assert spec.weight_name is not None
        size = await asyncio.to_thread(
            validate_weight_file, spec, path / spec.weight_name, self.rules
        )
        return ImageLora(path=path, weight_name=spec.weight_name, size_bytes=size)

    async def _load(self, spec: AdapterSpec, prepared: ImageLora) -> None:
        await self.engine.load_adapter(spec.name, str(prepared.path), prepared.weight_name)

    async def generate(self, job: ImageJob, adapters: list[dict]) -> dict:
        """One images request: ``job`` as the ingress parsed it, ``adapters`` the resolved mix
        ``[{"spec": AdapterSpec dump, "weight": float}]`` (empty: base model).
        Returns OpenAI's images response with base64 PNGs."""
        mix = [(self._spec(a["spec"]), float(a["weight"])) for a in adapters]
        if len(mix) > self.cfg.max_mix:
            raise InvalidRequestError(
                f"{len(mix)} adapters in one mix (with the one named by 'model'); "
                f"at most {self.cfg.max_mix}",
                "adapters",
            )
        names = [spec.name for spec, _ in mix]
        with self.residency.request(*names), self._metered(*names) as metered:
            async with AsyncExitStack() as held:
                # NOTE: a fixed order, so two mixes never each hold half of what the other needs.
                for spec, _ in sorted(mix, key=lambda m: m[0].name):
                    await held.enter_async_context(self.pool.use(spec))
                pngs = await self.engine.generate(
                    job, [(spec.name, weight) for spec, weight in mix]
                )
                metered.images = len(pngs)
        return {
            "created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(p).decode()} for p in pngs],
        }

    async def validate_adapter(self, spec: dict) -> dict:
        """Fetch, check the file, and trial-load it into the pipeline under a scratch name (then
        delete it): a LoRA for another base is refused here, before registration."""
        s = self._spec(spec)
        prepared = await self._prepare(s)
        info = await self.engine.check_adapter(s.name, str(prepared.path), prepared.weight_name)
        return s.model_copy(
            update={"size_bytes": prepared.size_bytes, "rank": info["rank"] or None}
        ).model_dump(mode="json")

    async def pin_adapter(self, spec: dict) -> None:
        await self.pool.pin(self._spec(spec))
