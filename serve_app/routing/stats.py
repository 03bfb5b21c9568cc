"""The routing contract: what a replica publishes about its adapters and what routers read.

One dataclass, ``RoutingStats``. A replica returns ``RoutingStats.as_dict()`` from its
``record_routing_stats`` method (Serve carries plain dicts to every router) and pushes the same on
every residency change (``routing.publisher``); routers read it back with ``RoutingStats.parse``.
No Ray here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

VICTIMS = 4  # eviction candidates a replica reports
LOCAL = 1024  # adapters on the node's disk a replica reports, at most
_seq = itertools.count(1)


@dataclass(frozen=True, slots=True)
class RoutingStats:
    """One replica's adapter residency, as of one moment.

    ``seq``: a per-process sequence number (a router ignores a report older than one it has seen:
    Serve's periodic poll can land after a fresher push). ``resident`` / ``loading``: adapters
    ready / being loaded. ``slots``: working-set capacity (0 = unknown). ``victims``: the next
    eviction candidates, first victim first, as ``(adapter, last used unix s)``, in use or not
    (routers skip those they know to be in use). ``ongoing``: requests in the replica now.
    ``load_s``: what a cold load has recently cost this replica, seconds (a moving average of its
    pool's load times; 0 = none yet): routers wait longer for a cheap placement when loads cost
    more (policy.py, ``wait_per_load``). ``local``: adapters neither resident nor loading whose
    files are on this replica's node (its disk cache), so loading one there costs a disk read,
    not a download: routers place cold adapters where their files are (at most ``LOCAL`` names).
    """

    seq: int
    resident: tuple[str, ...] = ()
    loading: tuple[str, ...] = ()
    slots: int = 0
    victims: tuple[tuple[str, float], ...] = ()
    ongoing: int = 0
    load_s: float = 0.0
    local: tuple[str, ...] = ()

    @classmethod
    def from_pool(
        cls,
        snapshot: Mapping[str, Any],
        *,
        ongoing: int = 0,
        last_used: Mapping[str, float] = {},
        load_s: float = 0.0,
        local: Iterable[str] = (),
    ) -> RoutingStats:
        """From an ``AdapterPool.snapshot()``: victims in the pool's own eviction order when it
        reports one, else the resident adapters least recently used first."""
        resident = tuple(snapshot.get("resident", ()))
        loading = tuple(snapshot.get("loading", ()))
        order = snapshot.get("eviction_order")
        if order is None:
            order = sorted(resident, key=lambda a: last_used.get(a, 0.0))
        return cls(
            seq=next(_seq),
            resident=resident,
            loading=loading,
            slots=int(snapshot.get("capacity") or 0),
            victims=tuple((a, last_used.get(a, 0.0)) for a in order[:VICTIMS]),
            ongoing=int(ongoing),
            load_s=round(float(load_s), 3),
            local=tuple(sorted(set(local) - {*resident, *loading}))[:LOCAL],
        )

    @property
    def held(self) -> list[str]:
        """Resident and loading adapters, sorted: what Ray's multiplexed model ids should say."""
        return sorted({*self.resident, *self.loading})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> RoutingStats | None:
        """A published dict back as ``RoutingStats``; None when there is none (a replica without
        our publisher, or one that has not reported yet)."""
        if not data or "resident" not in data:
            return None
        return cls(
            seq=int(data.get("seq", 0)),
            resident=tuple(data["resident"]),
            loading=tuple(data.get("loading", ())),
            slots=int(data.get("slots", 0)),
            victims=tuple((str(a), float(t)) for a, t in data.get("victims", ())),
            ongoing=int(data.get("ongoing", 0)),
            load_s=float(data.get("load_s", 0.0)),
            local=tuple(data.get("local", ())),
        )
