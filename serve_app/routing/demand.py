"""Fleet-wide adapter demand, so that a replica that joins can load, before it takes traffic, the
adapters routers will send it.

Each replica counts the requests it serves per adapter (``DemandCounter``: counts that halve every
``HALF_LIFE_S``, so they follow the current load) and reports them with the adapters it holds;
one ``DemandBook`` (kept by the registry) holds the latest report per replica. ``warm_set`` is
what a joining replica loads, by the router's own rule (policy.copies_wanted, step 2 of
policy.py): an adapter with share ``s`` of the fleet's requests should be held by
``s x replicas x hot_factor`` replicas; while fewer hold it, the router spills it to a replica
with room, which a fresh replica is. An adapter demanded but held nowhere is placed on a replica
with a free slot, which a fresh replica has. So, counting the joining replica
(``replicas = reporting + 1``), the adapters with ``copies_wanted - holders > 0`` go first, the
largest shortfall first, only those requested at least ``min_count`` times lately (a one-off
request is not worth a slot), at most ``k``.
No Ray here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.routing.policy import copies_wanted

HALF_LIFE_S = 15.0  # a replica's request counts halve this often
MAX_AGE_S = 10.0  # a replica that has not reported for this long is gone (dead or removed)


class DemandCounter:
    """Requests per adapter on one replica, halving every ``half_life_s``."""

    def __init__(self, half_life_s: float = HALF_LIFE_S, clock: Any = time.monotonic) -> None:
        self.half_life_s = half_life_s
        self._clock = clock
        self._t0 = clock()
        self._counts: dict[str, float] = {}  # in units of 2 ** ((t - t0) / half_life)

    def add(self, adapters: Iterable[str]) -> None:
        w = self._weight()
        for a in adapters:
            self._counts[a] = self._counts.get(a, 0.0) + w

    def top(self, n: int) -> dict[str, float]:
        """The ``n`` most requested adapters and their decayed counts."""
        w = self._weight()
        self._counts = {a: c for a, c in self._counts.items() if c / w >= 0.01}
        best = sorted(self._counts.items(), key=lambda kv: -kv[1])[:n]
        return {a: c / w for a, c in best}

    def _weight(self) -> float:
        x = (self._clock() - self._t0) / self.half_life_s
        if x > 30:  # NOTE: rebase before the weights overflow; counts keep their values
            scale = 2.0**x
            self._counts = {a: c / scale for a, c in self._counts.items()}
            self._t0 = self._clock()
            x = 0.0
        return math.pow(2.0, x)


@dataclass(frozen=True)
class Report:
    counts: Mapping[str, float]
    held: frozenset[str]
    at: float


class DemandBook:
    """The latest demand report of every replica of one base model."""

    def __init__(self, max_age_s: float = MAX_AGE_S, clock: Any = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._reports: dict[str, Report] = {}

    def report(self, replica: str, counts: Mapping[str, float], held: Iterable[str]) -> None:
        self._reports[replica] = Report(dict(counts), frozenset(held), self._clock())

    def live(self) -> dict[str, Report]:
        cut = self._clock() - self.max_age_s
        self._reports = {r: v for r, v in self._reports.items() if v.at >= cut}
        return dict(self._reports)

    def warm_set(
        self, k: int, *, joining: str = "", hot_factor: float = 1.0, min_count: float = 1.5
    ) -> list[str]:
        """What replica ``joining`` should load before taking traffic (module docstring)."""
        reports = [v for r, v in self.live().items() if r != joining]
        if k <= 0 or not reports:
            return []
        demand: dict[str, float] = {}
        holders: dict[str, int] = {}
        for rep in reports:
            for a, c in rep.counts.items():
                demand[a] = demand.get(a, 0.0) + c
            for a in rep.held:
                holders[a] = holders.get(a, 0) + 1
        return warm_order(demand, holders, len(reports) + 1, k, hot_factor, min_count)


def warm_order(
    demand: Mapping[str, float],
    holders: Mapping[str, int],
    replicas: int,
    k: int,
    hot_factor: float = 1.0,
    min_count: float = 1.5,
) -> list[str]:
    """The module docstring's rule: adapters with ``copies_wanted - holders > 0`` among
    ``replicas`` (the joining one counted), largest shortfall first, at most ``k``."""
    total = sum(demand.values())
    if total <= 0 or k <= 0:
        return []
    short = {
        a: copies_wanted(c / total, replicas, hot_factor) - holders.get(a, 0)
        for a, c in demand.items()
        if c >= min_count
    }
    ranked = sorted((a for a, d in short.items() if d > 0), key=lambda a: (-short[a], a))
    return ranked[:k]
