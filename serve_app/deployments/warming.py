"""Warm replicas: every model replica reports its adapter demand and residency to the registry
(``DemandReporter``), and a replica that starts while others serve loads what routers will send it
before it takes traffic (``warm``: the registry's ``warm_set``, routing/demand.py's rule).

NOTE: Serve sends a replica no request before its constructor returns, so ``warm`` runs there,
after the pinned adapters and before the replica counts as started; it is bounded by the free
slots and by ``timeout_s``, and a load that fails only logs (the adapter loads on demand later).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from adapters.spec import AdapterSpec
from serve_app.routing.demand import DemandCounter

log = logging.getLogger("serve_app.warming")


class DemandReporter:
    """Counts this replica's requests per adapter; reports them with its residency every
    ``period_s`` to ``registry.report_demand``."""

    def __init__(
        self, registry: Any, base: str, replica: str, pool: Any, period_s: float = 2.0
    ) -> None:
        self.registry, self.base, self.replica, self.pool = registry, base, replica, pool
        self.period_s = period_s
        self.counter = DemandCounter()
        self._task: asyncio.Task | None = None

    def requested(self, adapters: Iterable[str]) -> None:
        self.counter.add(adapters)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.report()
            except Exception as e:  # the registry restarting must not stop this replica
                log.warning("demand report for %s failed: %r", self.base, e)
            await asyncio.sleep(self.period_s)

    async def report(self) -> None:
        snap = self.pool.snapshot()
        held = [*snap.get("resident", ()), *snap.get("loading", ())]
        counts = self.counter.top(4 * max(1, len(held)) + 64)
        await asyncio.wait_for(
            self.registry.report_demand.remote(self.base, self.replica, counts, held),
            5 * self.period_s,
        )


async def warm(
    pool: Any,
    registry: Any,
    base: str,
    replica: str,
    specs: Mapping[str, AdapterSpec],
    slots: int,
    *,
    hot_factor: float = 1.0,
    timeout_s: float = 30.0,
) -> list[str]:
    """Load the registry's ``warm_set`` for a joining replica (at most its free slots, at most
    ``timeout_s`` in all, hottest first); return the adapters made resident."""
    free = slots - len(pool.resident())
    if timeout_s <= 0 or free <= 0:
        return []
    deadline = time.monotonic() + timeout_s
    names = await asyncio.wait_for(
        registry.warm_set.remote(base, free, replica, hot_factor), timeout_s
    )  # NOTE: bounded too: a registry being replaced must not hold up this replica's start
    loaded: list[str] = []
    for name in names:
        spec = specs.get(name)
        left = deadline - time.monotonic()
        if spec is None or left <= 0:
            continue
        try:
            await asyncio.wait_for(pool.ensure(spec), left)
            loaded.append(name)
        except Exception as e:  # NOTE: warming is best effort; requests load it on demand
            log.warning("warming %s:%s failed: %r", base, name, e)
    log.info("warmed %s replica %s with %s (asked: %s)", base, replica, loaded, names)
    return loaded
