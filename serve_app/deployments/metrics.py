"""Per-adapter and per-replica Prometheus metrics of a model replica, through ``ray.util.metrics``.

Ray exports them (prefixed ``ray_``) on every node's metrics export port with the other Ray
metrics; the README's "Metrics" section says how to scrape them and deploy/grafana/ has a
dashboard. What is counted (tag ``deployment`` on all):

per adapter (tag ``adapter``; ``__base__`` for base-model requests):
  loraserve_requests{outcome=ok|error}, loraserve_request_seconds (histogram, time in the replica),
  loraserve_output_tokens (text: usage.completion_tokens; streamed: one per chunk),
  loraserve_images, loraserve_cache_hits / loraserve_cache_misses (adapter resident on arrival or
  not), loraserve_adapter_load_seconds (histogram: its count is the loads), loraserve_load_failures,
  loraserve_adapter_evicted.
per replica (tag ``replica``):
  loraserve_replica_ongoing, loraserve_replica_resident_adapters (gauges); the load / eviction
  counters of routing/publisher.py; routing decisions are counted by routing/router.py.

Label cardinality is bounded: each replica process gives its own label to the first
``LORASERVE_METRICS_MAX_ADAPTERS`` (default 100) distinct adapters it sees and counts the rest as
``__other__``, so a fleet serving 100,000 adapters exports at most 101 adapter values per metric
per replica. Hot adapters arrive first almost surely; ``/v1/adapters`` gives exact per-adapter
state for the long tail. Outside a Serve replica (unit tests) nothing is exported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from serve_app import env

log = logging.getLogger("serve_app.metrics")

OTHER = "__other__"
BASE = "__base__"
_LATENCY_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
_LOAD_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]


def max_adapter_labels() -> int:
    return int(env.get("METRICS_MAX_ADAPTERS", "100") or 100)


class AdapterLabels:
    """Maps adapter names to label values: the first ``limit`` distinct names keep theirs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._named: set[str] = set()

    def __call__(self, name: str | None) -> str:
        if not name:
            return BASE
        if name in self._named:
            return name
        if len(self._named) < self.limit:
            self._named.add(name)
            return name
        return OTHER


class _Request:
    """What one request produced, filled in while it runs."""

    def __init__(self) -> None:
        self.tokens = 0
        self.images = 0

    def saw(self, item: Any) -> None:
        """Count output from one item of the LLM deployment's item protocol."""
        if isinstance(item, dict):
            self.tokens += int((item.get("usage") or {}).get("completion_tokens") or 0)
        elif isinstance(item, str) and item.startswith("data:") and "[DONE]" not in item:
            self.tokens += 1


class ReplicaMetrics:
    """One per replica. ``on_pool_event`` goes to ``AdapterPool(on_event=...)``; ``request``
    wraps each request. Counters are also kept in plain attributes (``counts``) for tests."""

    def __init__(self, labels: AdapterLabels | None = None) -> None:
        self.label = labels or AdapterLabels(max_adapter_labels())
        self.counts: dict[tuple[str, str], int] = {}
        self.ongoing = 0
        self._pool: Any = None
        self._m: dict[str, Any] | None = None
        try:
            from ray import serve

            ctx = serve.get_replica_context()
            self._m = _make(ctx.deployment, ctx.replica_id.unique_id)
        except Exception:  # not inside a Serve replica: count in memory only
            log.debug("ReplicaMetrics outside a Serve replica: not exporting")

    def _inc(self, metric: str, adapter: str, value: float = 1, **tags: str) -> None:
        key = (metric, adapter)
        self.counts[key] = self.counts.get(key, 0) + int(value)
        if self._m is not None and value and metric in self._m:
            self._m[metric].inc(value, tags={"adapter": adapter, **tags})

    def on_pool_event(self, name: str, state: Any, info: dict[str, Any]) -> None:
        value = getattr(state, "value", state)
        adapter = self.label(name)
        if value == "ready" and "load_s" in info:
            self._inc("loads", adapter)
            if self._m is not None:
                self._m["load_s"].observe(float(info["load_s"]), tags={"adapter": adapter})
        elif value == "failed":
            self._inc("load_failures", adapter)
        elif value == "evicted":
            self._inc("evicted", adapter)
        if value in ("ready", "evicted") and self._m is not None and self._pool is not None:
            self._m["resident"].set(len(self._pool.resident()))

    def bind(self, pool: Any) -> None:
        """The pool whose resident count the gauge shows (anything with ``resident()``)."""
        self._pool = pool

    @contextmanager
    def request(self, adapters: list[str], *, resident: list[bool]) -> Iterator[_Request]:
        """Time one request for ``adapters`` (empty: the base model); ``resident[i]``: whether
        ``adapters[i]`` was loaded when the request arrived (a cache hit)."""
        labels = [self.label(a) for a in adapters] or [BASE]
        for a, hit in zip(labels, resident, strict=False):
            self._inc("cache_hits" if hit else "cache_misses", a)
        rec = _Request()
        start = time.perf_counter()
        self._ongoing(+1)
        outcome = "error"
        try:
            yield rec
            outcome = "ok"
        except GeneratorExit:  # the caller stopped reading (a unary call took its one item)
            outcome = "ok"
            raise
        finally:
            self._ongoing(-1)
            elapsed = time.perf_counter() - start
            for a in labels:
                self._inc(f"requests_{outcome}", a)
                self._inc("output_tokens", a, rec.tokens)
                self._inc("images", a, rec.images)
                if self._m is not None:
                    self._m["requests"].inc(tags={"adapter": a, "outcome": outcome})
                    self._m["latency"].observe(elapsed, tags={"adapter": a})

    def _ongoing(self, delta: int) -> None:
        self.ongoing += delta
        if self._m is not None:
            self._m["ongoing"].set(self.ongoing)


def _make(deployment: str, replica: str) -> dict[str, Any]:
    from ray.util import metrics

    d = {"deployment": deployment}
    r = {"deployment": deployment, "replica": replica}

    def counter(name: str, desc: str, *extra: str) -> Any:
        m = metrics.Counter(name, description=desc, tag_keys=("deployment", "adapter", *extra))
        m.set_default_tags(d)
        return m

    def histogram(name: str, desc: str, bounds: list[float]) -> Any:
        m = metrics.Histogram(
            name, description=desc, boundaries=bounds, tag_keys=("deployment", "adapter")
        )
        m.set_default_tags(d)
        return m

    def gauge(name: str, desc: str) -> Any:
        m = metrics.Gauge(name, description=desc, tag_keys=("deployment", "replica"))
        m.set_default_tags(r)
        return m

    c = counter
    # Keys are the in-memory count names; loads are the count of load_s's histogram, requests
    # by outcome are exported as one counter with an outcome tag.
    return {
        "requests": c("loraserve_requests", "Requests served, by adapter and outcome.", "outcome"),
        "latency": histogram(
            "loraserve_request_seconds", "Time a request spent in the replica.", _LATENCY_S
        ),
        "output_tokens": c("loraserve_output_tokens", "Completion tokens generated."),
        "images": c("loraserve_images", "Images generated."),
        "cache_hits": c("loraserve_cache_hits", "Requests whose adapter was resident."),
        "cache_misses": c("loraserve_cache_misses", "Requests that waited for a load."),
        "load_s": histogram(
            "loraserve_adapter_load_seconds", "Adapter fetch+validate+load time.", _LOAD_S
        ),
        "load_failures": c("loraserve_load_failures", "Adapter loads that failed."),
        "evicted": c("loraserve_adapter_evicted", "Adapters evicted from the working set."),
        "ongoing": gauge("loraserve_replica_ongoing", "Requests in this replica now."),
        "resident": gauge("loraserve_replica_resident_adapters", "Adapters resident now."),
    }
