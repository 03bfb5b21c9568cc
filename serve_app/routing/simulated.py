"""Simulated replicas, a tool for the routing benchmark (benchmarks/routing) and the routing
integration tests: real Ray Serve replicas whose adapter loads and requests are sleeps.

Both hold at most ``slots`` adapters, load one in ``load_s`` (a sleep), serve at most ``k``
requests at once for ``service_s`` each, and accept ``max_ongoing_requests`` (set by the caller).

- ``PoolReplica``: the real ``adapters.pool.AdapterPool`` (lru or lfu eviction) and the real
  ``ResidencyReporter``, as our deployments use them. Works under our router and Ray's default.
- ``MuxReplica``: Ray Serve's own ``@serve.multiplexed(max_num_models_per_replica=slots)``.

Each response is a dict: ``replica`` (its id), ``adapter``, ``loads`` (the replica's loads so
far), ``adapter_loads`` (how many times it has loaded that adapter), ``replica_s`` (the request's
time on the replica) and ``adapter_wait_s`` (how much of it went waiting for the adapter).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from ray import serve

from adapters.pool import AdapterPool
from adapters.spec import AdapterSpec
from serve_app.routing.publisher import ResidencyReporter


@dataclass
class _Weights:
    size_bytes: int = 0


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class PoolReplica:
    def __init__(self, slots: int, k: int, load_s: float, service_s: float, eviction: str):
        from serve_app.deployments.logs import to_replica_log

        to_replica_log()  # adapter loads and evictions in the replica's log, as in serve_app
        self._sem = asyncio.Semaphore(k)
        self._service_s = service_s
        self._load_s = load_s
        self._loads: Counter[str] = Counter()
        self.residency = ResidencyReporter()
        self.pool = AdapterPool(
            prepare=self._prepare,
            load=self._load,
            unload=self._unload,
            max_count=slots,
            policy=eviction,
            on_event=self.residency.on_pool_event,
            name=serve.get_replica_context().replica_id.unique_id,
        )
        self.residency.bind(self.pool)

    async def _prepare(self, spec: AdapterSpec) -> _Weights:
        return _Weights()

    async def _load(self, spec: AdapterSpec, prepared: _Weights) -> None:
        async with self._sem:  # a load occupies the accelerator like a batch slot
            await asyncio.sleep(self._load_s)
        self._loads[spec.name] += 1

    async def _unload(self, name: str) -> None:
        return None

    def record_routing_stats(self) -> dict:
        return self.residency.record_routing_stats()

    async def __call__(self, adapter: str | None = None) -> dict:
        adapter = adapter or serve.get_multiplexed_model_id()
        t0 = time.perf_counter()
        # NOTE: like serve_app's deployments, a request holds its adapter from arrival (queued
        # in the engine) to the end, so an adapter with requests waiting is never evicted.
        with self.residency.request(adapter):
            async with self.pool.use(AdapterSpec(name=adapter, source="sim://" + adapter)):
                t1 = time.perf_counter()
                async with self._sem:
                    await asyncio.sleep(self._service_s)
        return _reply(self._loads, adapter, t0, t1)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class MuxReplica:
    def __init__(self, slots: int, k: int, load_s: float, service_s: float, eviction: str):
        self._sem = asyncio.Semaphore(k)
        self._service_s = service_s
        self._load_s = load_s
        self._loads: Counter[str] = Counter()

        async def load(model_id: str) -> str:  # a plain function: Serve sets attributes on it
            await asyncio.sleep(self._load_s)
            self._loads[model_id] += 1
            return model_id

        self.get_model = serve.multiplexed(max_num_models_per_replica=slots)(load)

    async def __call__(self, adapter: str | None = None) -> dict:
        adapter = serve.get_multiplexed_model_id()
        t0 = time.perf_counter()
        async with self._sem:
            await self.get_model(adapter)
            t1 = time.perf_counter()
            await asyncio.sleep(self._service_s)
        return _reply(self._loads, adapter, t0, t1)


def _reply(loads: Counter[str], adapter: str, t0: float, t1: float) -> dict:
    return {
        "replica": serve.get_replica_context().replica_id.unique_id,
        "adapter": adapter,
        "loads": sum(loads.values()),
        "adapter_loads": loads[adapter],
        "replica_s": time.perf_counter() - t0,  # arrival at the replica to the reply
        "adapter_wait_s": t1 - t0,  # waiting for the adapter (its load, or a slot for it)
    }
