"""Adapter-aware Serve autoscaling: replicas for the requests in flight (Serve's own rule) and
for adapter-load pressure, which Serve's rule cannot see.

Why: a fleet whose working sets are too small for the adapters in demand thrashes (every other
request waits for a cold load) while queues stay short, so a policy of ongoing requests alone
never scales it out. Each replica reports, over the last ``WINDOW_S`` seconds
(``AdapterPressure.stats``, returned from the deployment's ``record_autoscaling_stats``):

  load_busy   seconds spent loading adapters per second (0.5: half the time waiting for loads)
  loads_per_s adapter loads per second
  demanded    distinct adapters requested at least twice (a one-off request misses whatever the
              fleet's size, so only recurring demand asks for slots)
  slots       working-set capacity (adapters it can hold)

``desired_replicas`` (pure; the simulator in benchmarks/autoscale runs the same function):

  by_requests = ongoing requests / target_ongoing_requests             (Serve's default policy)
  fit         = sum(demanded) / (mean(slots) * FILL)      replicas whose working sets hold what is
                                                          demanded (an adapter spilled to several
                                                          replicas takes a slot on each, so the
                                                          per-replica sum is the slots wanted)
  by_loads    = current * mean(load_busy) / BUSY_TARGET, at most max(fit, current + 1),
                only when mean(load_busy) > BUSY_TARGET and loads_per_s > 0
  desired     = max(by_requests, by_loads)

Serve then applies the deployment's min/max replicas, upscale/downscale delays and smoothing
factors to ``desired`` (it wraps every custom policy), so the delays keep their meaning.
Enable it with ``deployment.autoscaling_policy: adapter_aware`` in the config.
No Ray import here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WINDOW_S = 30.0  # how far back a replica's pressure figures look
BUSY_TARGET = 0.25  # load seconds per second a replica may spend before it counts as thrashing
FILL = 0.8  # fraction of slots the fleet's working sets may fill with demanded adapters
POLICY_PATH = "serve_app.autoscaling:adapter_aware_policy"


@dataclass(frozen=True)
class Pressure:
    """One replica's adapter-load figures over the window (see the module docstring)."""

    load_busy: float = 0.0
    loads_per_s: float = 0.0
    demanded: float = 0.0
    slots: float = 0.0


def desired_replicas(
    current: int,
    ongoing: float,
    target_ongoing: float,
    replicas: Iterable[Pressure],
    *,
    busy_target: float = BUSY_TARGET,
    fill: float = FILL,
) -> float:
    """Replicas wanted before Serve's bounds and delays; see the module docstring."""
    by_requests = ongoing / target_ongoing
    reps = list(replicas)
    if current <= 0 or not reps:
        return by_requests
    busy = sum(r.load_busy for r in reps) / len(reps)
    loads = sum(r.loads_per_s for r in reps)
    if busy <= busy_target or loads <= 0:
        return by_requests
    slots = sum(r.slots for r in reps) / len(reps)
    fit = sum(r.demanded for r in reps) / (slots * fill) if slots else current + 1
    by_loads = min(current * busy / busy_target, max(fit, current + 1))
    return max(by_requests, by_loads)


def adapter_aware_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Serve's ``AutoscalingPolicy(policy_function=POLICY_PATH)``: reads Serve's
    ``AutoscalingContext`` (ongoing requests, config, per-replica aggregated custom metrics)."""
    metrics: Mapping[str, Mapping[Any, float]] = ctx.aggregated_metrics or {}
    ids = set().union(*(m.keys() for m in metrics.values())) if metrics else set()

    def fig(name: str, rid: Any) -> float:
        return float(metrics.get(name, {}).get(rid, 0.0))

    reps = [
        Pressure(fig("load_busy", r), fig("loads_per_s", r), fig("demanded", r), fig("slots", r))
        for r in ids
    ]
    want = desired_replicas(
        ctx.current_num_replicas,
        ctx.total_num_requests,
        ctx.config.get_target_ongoing_requests(),
        reps,
    )
    return want, {}


class AdapterPressure:
    """Replica side: counts loads and the adapters requested; ``stats()`` is what the deployment
    returns from ``record_autoscaling_stats`` (numbers only, as Serve requires)."""

    def __init__(self, slots: int, window_s: float = WINDOW_S, clock: Any = time.monotonic):
        self.slots = slots
        self.window_s = window_s
        self._clock = clock
        self._start = clock()
        self._loads: deque[tuple[float, float]] = deque()  # (finished at, seconds)
        self._seen: dict[str, tuple[float, float]] = {}  # adapter -> (previous, last) request

    def on_pool_event(self, name: str, state: Any, info: dict[str, Any]) -> None:
        if getattr(state, "value", state) == "ready" and "load_s" in info:
            self._loads.append((self._clock(), float(info["load_s"])))

    def requested(self, adapters: Iterable[str]) -> None:
        now = self._clock()
        for a in adapters:
            self._seen[a] = (self._seen.get(a, (-1e18, -1e18))[1], now)

    def stats(self) -> dict[str, float]:
        now = self._clock()
        cut = now - self.window_s
        while self._loads and self._loads[0][0] < cut:
            self._loads.popleft()
        if len(self._seen) > 4 * self.slots + 64:  # keep the map small
            self._seen = {a: t for a, t in self._seen.items() if t[1] >= cut}
        span = max(1.0, min(self.window_s, now - self._start))
        return {
            "load_busy": sum(s for _, s in self._loads) / span,
            "loads_per_s": len(self._loads) / span,
            "demanded": float(sum(1 for prev, _ in self._seen.values() if prev >= cut)),
            "slots": float(self.slots),
        }
