"""Replica side of adapter-aware routing: publish which adapters a replica holds, promptly.

A deployment that owns an ``adapters.pool.AdapterPool`` wires one ``ResidencyReporter``:

    self.residency = ResidencyReporter()
    self.pool = AdapterPool(..., on_event=self.residency.on_pool_event)
    self.residency.bind(self.pool)

    def record_routing_stats(self) -> dict:          # Serve polls this every
        return self.residency.record_routing_stats()  # request_routing_stats_period_s

    async def __call__(self, ...):
        with self.residency.request(spec.name):     # ongoing count + last use (victims)
            async with self.pool.use(spec): ...

What it does:
- Every pool transition that changes residency (a load STARTS, becomes ready, fails, or an adapter
  is evicted) schedules one coalesced push to the Serve controller through the same call Ray's
  ``@serve.multiplexed`` uses (``record_request_routing_info``), carrying the resident + loading
  ids as ``multiplexed_model_ids`` (so Ray's built-in multiplex routing, the ``builtin`` router
  option, sees our pool) and ``RoutingStats`` (routing/stats.py: what our router reads). The
  controller broadcasts it to every router within about one control-loop tick (0.1 s), so a load
  that has started is visible to routers before it finishes.
- Counts adapter loads and evictions per replica with ``ray.util.metrics`` (Prometheus):
  ``loraserve_adapter_loads_total`` / ``loraserve_adapter_evictions_total``
  (tags: deployment, replica).

Ray is imported only inside a replica (the constructor and ``publish``); no FastAPI here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from serve_app.routing.stats import RoutingStats

log = logging.getLogger("serve_app.residency")

# Pool states (adapters.pool.AdapterState values) after which the replica's residency changed.
_PUBLISH_ON = {"resolving", "ready", "failed", "evicted"}


class _Pool(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


class ResidencyReporter:
    """Publishes a replica's adapter residency to routers; counts loads and evictions.

    Create it inside the replica (its constructor reads the Serve replica context; outside a
    replica, e.g. in unit tests, publishing is skipped and only the counters are kept).
    """

    def __init__(self) -> None:
        self._pool: _Pool | None = None
        self.ongoing = 0
        self.loads = 0
        self.evictions = 0
        self.load_s = 0.0  # moving average of this pool's load times (RoutingStats.load_s)
        self.last_used: dict[str, float] = {}
        self._scheduled = False
        # Adapters whose files are on this node's disk (RoutingStats.local); set by the owner.
        self.local: Callable[[], Iterable[str]] = tuple
        self._replica_id = None
        self._loads_metric = self._evictions_metric = None
        try:
            from ray import serve
            from ray.util import metrics

            ctx = serve.get_replica_context()
            self._replica_id = ctx.replica_id
            tags = {"deployment": ctx.deployment, "replica": ctx.replica_id.unique_id}
            self._loads_metric = metrics.Counter(
                "loraserve_adapter_loads",
                description="Adapters loaded into this replica's working set.",
                tag_keys=("deployment", "replica"),
            )
            self._loads_metric.set_default_tags(tags)
            self._evictions_metric = metrics.Counter(
                "loraserve_adapter_evictions",
                description="Adapters evicted from this replica's working set.",
                tag_keys=("deployment", "replica"),
            )
            self._evictions_metric.set_default_tags(tags)
        except Exception:  # not inside a Serve replica
            log.debug("ResidencyReporter outside a Serve replica: not publishing")

    def bind(self, pool: _Pool) -> None:
        """Set the pool whose ``snapshot()`` is published (call right after creating it)."""
        self._pool = pool
        self.publish()

    def stats(self) -> RoutingStats:
        snap = self._pool.snapshot() if self._pool is not None else {}
        try:
            local = self.local()
        except Exception as e:  # the disk is a hint: residency must still be published
            log.warning("could not list the adapters on this node's disk: %r", e)
            local = ()
        return RoutingStats.from_pool(
            snap, ongoing=self.ongoing, last_used=self.last_used, load_s=self.load_s, local=local
        )

    def record_routing_stats(self) -> dict[str, Any]:
        """Return value for the deployment's ``record_routing_stats`` method."""
        return self.stats().as_dict()

    @contextmanager
    def request(self, *adapters: str) -> Iterator[None]:
        """Count one ongoing request using ``adapters`` (their last use feeds ``victims``)."""
        now = time.time()
        for a in adapters:
            self.last_used[a] = now
        self.ongoing += 1
        try:
            yield
        finally:
            self.ongoing -= 1

    def on_pool_event(self, name: str, state: Any, info: dict[str, Any]) -> None:
        """``AdapterPool(on_event=...)`` callback: count, and publish residency changes."""
        value = getattr(state, "value", state)
        if value in ("evicted", "failed"):
            self.last_used.pop(name, None)
        if value == "ready":
            self.loads += 1
            if "load_s" in info:  # the first load sets it; later ones weigh 1/4
                t = float(info["load_s"])
                self.load_s = t if self.loads == 1 else 0.75 * self.load_s + 0.25 * t
            if self._loads_metric is not None:
                self._loads_metric.inc()
        elif value == "evicted":
            self.evictions += 1
            if self._evictions_metric is not None:
                self._evictions_metric.inc()
        if value in _PUBLISH_ON:
            self._schedule()

    def _schedule(self) -> None:
        # NOTE: coalesce: several transitions in one event-loop tick make one push.
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.publish()
            return
        self._scheduled = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self.publish()

    def publish(self) -> None:
        """Push residency and routing stats to the Serve controller now (fire and forget)."""
        if self._replica_id is None or self._pool is None:
            return
        try:
            from serve_app.routing.serve_internals import publish_routing_info

            stats = self.stats()
            publish_routing_info(self._replica_id, stats.held, stats.as_dict())
        except Exception as e:
            log.warning("failed to publish adapter residency: %s", e)
