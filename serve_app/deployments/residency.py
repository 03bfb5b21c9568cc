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
  option, sees our pool) and ``routing_stats(...)`` (what our router reads). The controller
  broadcasts it to every router within about one control-loop tick (0.1 s), so a load that has
  started is visible to routers before it finishes.
- Counts adapter loads and evictions per replica with ``ray.util.metrics`` (Prometheus):
  ``loraserve_adapter_loads_total`` / ``loraserve_adapter_evictions_total``
  (tags: deployment, replica).

No FastAPI and no routing imports here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

log = logging.getLogger("serve_app.residency")

# Pool states (adapters.pool.AdapterState values) after which the replica's residency changed.
_PUBLISH_ON = {"resolving", "ready", "failed", "evicted"}
_seq = itertools.count(1)


class _Pool(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


def routing_stats(
    pool_snapshot: dict[str, Any],
    *,
    ongoing: int | None = None,
    last_used: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The dict a replica returns from ``record_routing_stats`` (read by our router).

    Keys: ``v`` (a per-process sequence number: routers ignore a report older than one already
    seen, because Serve's periodic poll can land after a fresher push), ``resident``,
    ``loading``, ``slots`` (working-set capacity), ``victims`` (the next four eviction candidates
    as ``[name, last used unix s]``, in use or not: the snapshot's ``eviction_order`` when it has
    one, else the resident adapters least recently used first; routers skip those they know to be
    in use), ``ongoing`` (when given).
    """
    stats: dict[str, Any] = {
        "v": next(_seq),
        "t": time.time(),
        "resident": list(pool_snapshot.get("resident", [])),
        "loading": list(pool_snapshot.get("loading", [])),
        "slots": int(pool_snapshot.get("capacity") or 0),
    }
    used = last_used or {}
    order = pool_snapshot.get("eviction_order")
    if order is None:
        order = sorted(stats["resident"], key=lambda a: used.get(a, 0.0))
    stats["victims"] = [[a, used.get(a, 0.0)] for a in order[:4]]
    if ongoing is not None:
        stats["ongoing"] = int(ongoing)
    return stats


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
        self.last_used: dict[str, float] = {}
        self._scheduled = False
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

    def record_routing_stats(self) -> dict[str, Any]:
        """Return value for the deployment's ``record_routing_stats`` method."""
        snap = self._pool.snapshot() if self._pool is not None else {}
        return routing_stats(snap, ongoing=self.ongoing, last_used=self.last_used)

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
            from ray.serve._private.common import RequestRoutingInfo
            from ray.serve.context import _get_global_client

            stats = self.record_routing_stats()
            _get_global_client().record_request_routing_info(
                RequestRoutingInfo(
                    replica_id=self._replica_id,
                    multiplexed_model_ids=sorted({*stats["resident"], *stats["loading"]}),
                    routing_stats=stats,
                )
            )
        except Exception as e:
            log.warning("failed to publish adapter residency: %s", e)
