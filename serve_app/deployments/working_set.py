"""What every model deployment wires the same way around its engine: a Fetcher built from the
sources config, and the adapter pool with its residency reporter (for routers) and registry
follower (deletes and pins made through the admin API reach this replica).
"""

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from adapters.pool import AdapterPool
from adapters.sources import Fetcher
from adapters.spec import AdapterSpec
from serve_app import env
from serve_app.autoscaling import AdapterPressure
from serve_app.config import SourceOptions
from serve_app.deployments.metrics import ReplicaMetrics
from serve_app.deployments.registry_sync import RegistryFollower
from serve_app.deployments.warming import DemandReporter, warm
from serve_app.engines.base import AdapterEngine
from serve_app.routing.publisher import ResidencyReporter

log = logging.getLogger("serve_app.working_set")


def make_fetcher(sources: SourceOptions) -> Fetcher:
    return Fetcher(
        allowed_roots=sources.allowed_roots,
        cache_dir=os.path.expanduser(env.adapter_cache_dir() or sources.cache_dir),
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
    demand: DemandReporter

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
        warm_timeout_s: float = 0.0,
        hot_factor: float = 1.0,
        fetcher: Fetcher | None = None,
    ) -> "WorkingSet":
        """Build the pool, then load the pinned adapters now: those the registry's catalogue pins
        (with their versions; runtime pins included), or the config's when there is no registry
        or it cannot be reached. Then, with a registry and ``warm_timeout_s`` > 0, warm: load
        what routers will send this replica (deployments/warming.py), before it takes traffic.
        ``fetcher``: the replica's; routers are told which catalogue adapters have their files on
        this node (``Fetcher.on_disk``: RoutingStats.local), and an unloaded adapter's files are
        kept on disk first (``Fetcher.keep``)."""
        residency = ResidencyReporter()
        metrics = ReplicaMetrics()
        # NOTE: set once started: loads of pinned and warmed adapters are not thrash, so the
        # autoscaling pressure counts loads from the first request on.
        pressure: AdapterPressure | None = None

        def on_event(name: str, state: Any, info: dict) -> None:
            residency.on_pool_event(name, state, info)
            metrics.on_pool_event(name, state, info)
            if pressure is not None:
                pressure.on_pool_event(name, state, info)

        paths: dict[str, Any] = {}  # loaded adapter -> its files (what prepare fetched)

        async def load_and_remember(spec: AdapterSpec, prepared: Any) -> None:
            await load(spec, prepared)
            paths[spec.name] = getattr(prepared, "path", None)

        async def unload_and_keep(name: str) -> Any:
            try:
                return await unload(name)
            finally:
                path = paths.pop(name, None)
                if fetcher is not None and path is not None:
                    fetcher.keep(path)

        pool = AdapterPool(
            prepare=prepare,
            load=load_and_remember,
            unload=unload_and_keep,
            max_count=max_count,
            max_bytes=max_bytes,
            policy=policy,
            on_event=on_event,
            name=base,
        )
        residency.bind(pool)
        metrics.bind(pool)
        follower = RegistryFollower(registry, base, pool) if registry else None
        if follower is not None and fetcher is not None:
            residency.local = lambda: fetcher.on_disk(follower.specs)
        synced = False
        if follower is not None:
            try:
                await follower.sync()  # NOTE: pins as the catalogue says, before we are ready
                synced = True
            except Exception as e:
                log.warning("registry unreachable (%r): pinning the config's adapters", e)
            follower.start()
        if not synced:
            for spec in pinned:
                await pool.pin(spec)
        demand = DemandReporter(registry, base, _replica_id(), pool)
        if follower is not None:
            if synced:
                try:
                    await warm(
                        pool, registry, base, demand.replica, follower.specs, max_count,
                        hot_factor=hot_factor, timeout_s=warm_timeout_s,
                    )  # fmt: skip
                except Exception as e:
                    log.warning("could not warm %s: %r", base, e)
            demand.start()
        pressure = AdapterPressure(slots=max_count)
        return cls(pool, residency, follower, metrics, pressure, demand)


class WorkingSetMethods:
    """Deployment methods that only touch the working set and the engine's adapter verbs
    (``self.pool``, ``self.residency``, ``self.engine``)."""

    pool: AdapterPool
    residency: ResidencyReporter
    engine: AdapterEngine
    metrics: ReplicaMetrics
    pressure: AdapterPressure
    demand: DemandReporter

    def _metered(self, *adapters: str) -> Any:
        """``metrics.request`` for a request using ``adapters``, hits judged now (on arrival)."""
        self.pressure.requested(adapters)
        self.demand.requested(adapters)
        return self.metrics.request(
            list(adapters), resident=[self.pool.is_resident(a) for a in adapters]
        )

    async def adapter_snapshot(self) -> dict:
        """Our pool's view, the engine's own adapter list, engine counters, process RSS, and the
        catalogue adapters not held here whose files are on this node's disk (``on_disk``)."""
        from ray import serve

        return {
            **self.pool.snapshot(),
            "engine_adapters": await self.engine.engine_adapters(),
            "engine": self.engine.stats(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "rss_bytes": _rss_bytes(),
            "on_disk": list(self.residency.stats().local),
        }

    async def check_health(self) -> None:
        await self.engine.engine_adapters()

    async def unpin_adapter(self, name: str) -> None:
        await self.pool.unpin(name)

    async def evict_adapter(self, name: str) -> bool:
        return await self.pool.evict(name)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve polls this under autoscaling; serve_app.autoscaling's policy reads it."""
        return self.pressure.stats()

    def record_routing_stats(self) -> dict:
        """Serve polls this; routers read it (serve_app/routing/stats.py)."""
        return self.residency.record_routing_stats()


def _replica_id() -> str:
    """This Serve replica's id (the process id outside a replica)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return f"pid-{os.getpid()}"


def _rss_bytes() -> int:
    """Resident set size of this process (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
