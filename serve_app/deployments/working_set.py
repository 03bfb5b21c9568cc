"""What every model deployment wires the same way around its engine: a Fetcher built from the
sources config, and the adapter pool with its residency reporter (for routers) and registry
follower (deletes and pins made through the admin API reach this replica).
"""

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from adapters.pool import AdapterPool
from adapters.sources import Fetcher
from adapters.spec import AdapterSpec
from serve_app.autoscaling import AdapterPressure
from serve_app.config import SourceOptions
from serve_app.deployments.metrics import ReplicaMetrics
from serve_app.deployments.registry_sync import RegistryFollower
from serve_app.deployments.residency import ResidencyReporter


def make_fetcher(sources: SourceOptions) -> Fetcher:
    return Fetcher(
        allowed_roots=sources.allowed_roots,
        cache_dir=os.path.expanduser(sources.cache_dir),
        cache_max_bytes=sources.cache_max_bytes,
        s3_endpoint_url=sources.s3_endpoint_url,
        timeout_s=sources.fetch_timeout_s,
        retries=sources.fetch_retries,
        max_bytes=sources.max_adapter_bytes,
    )


@dataclass
class WorkingSet:
    pool: AdapterPool
    residency: ResidencyReporter
    follower: RegistryFollower | None
    metrics: ReplicaMetrics
    pressure: AdapterPressure

    @classmethod
    async def start(
        cls,
        *,
        base: str,
        prepare: Callable[[AdapterSpec], Awaitable[Any]],
        load: Callable[[AdapterSpec, Any], Awaitable[None]],
        unload: Callable[[str], Awaitable[Any]],
        max_count: int,
        max_bytes: int | None,
        policy: str,
        registry: Any,
        pinned: list[AdapterSpec],
    ) -> "WorkingSet":
        """Build the pool, then pin the config's pinned adapters (loading them now)."""
        residency = ResidencyReporter()
        metrics = ReplicaMetrics()
        pressure = AdapterPressure(slots=max_count)

        def on_event(name: str, state: Any, info: dict) -> None:
            residency.on_pool_event(name, state, info)
            metrics.on_pool_event(name, state, info)
            pressure.on_pool_event(name, state, info)

        pool = AdapterPool(
            prepare=prepare,
            load=load,
            unload=unload,
            max_count=max_count,
            max_bytes=max_bytes,
            policy=policy,
            on_event=on_event,
            name=base,
        )
        residency.bind(pool)
        metrics.bind(pool)
        follower = RegistryFollower(registry, base, pool) if registry else None
        for spec in pinned:
            await pool.pin(spec)
        return cls(pool, residency, follower, metrics, pressure)


class WorkingSetMethods:
    """Deployment methods that only touch the working set (``self.pool``, ``self.residency``)."""

    pool: AdapterPool
    residency: ResidencyReporter
    metrics: ReplicaMetrics
    pressure: AdapterPressure

    def _metered(self, *adapters: str) -> Any:
        """``metrics.request`` for a request using ``adapters``, hits judged now (on arrival)."""
        self.pressure.requested(adapters)
        return self.metrics.request(
            list(adapters), resident=[self.pool.is_resident(a) for a in adapters]
        )

    async def unpin_adapter(self, name: str) -> None:
        await self.pool.unpin(name)

    async def evict_adapter(self, name: str) -> bool:
        return await self.pool.evict(name)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve polls this under autoscaling; serve_app.autoscaling's policy reads it."""
        return self.pressure.stats()

    def record_routing_stats(self) -> dict:
        """Serve polls this; routers read it (see residency.routing_stats)."""
        return self.residency.record_routing_stats()
