"""Adapter-aware replica ranking: a pure function of what replicas hold and how busy they are.

No Ray here: the Ray Serve router (router.py), the unit tests and the 1,000-replica simulator
(benchmarks/simulate) all drive this same code.

Algorithm, for a request naming adapter ``a`` (``load(r) = ongoing(r) / max_ongoing(r)``):

1. **Hit.** Replicas holding ``a`` (resident, or a load already started) whose load is below
   ``spill_at``, least loaded first; resident before loading at equal load.
2. **Spill (hot adapter).** Every holder is at or above ``spill_at``: add ONE more replica, the
   best rendezvous score for ``a`` among non-holders whose load is below ``spill_to``. Rendezvous
   scores are fixed per (adapter, replica), so a hot adapter gains replicas in a stable order,
   and, once it cools, stops being sent to the extra copies and eviction reclaims them. When no
   replica is below ``spill_to`` (the whole fleet is busy) the request waits for its holders.
3. **Cold placement.** No holder: the best rendezvous score for ``a`` among replicas below
   ``place_below``; replicas with a free adapter slot come first, so placing a cold adapter evicts
   nothing while there is room. Every router instance computes the same score without talking
   to the others, so a burst of requests for one cold adapter loads it on one replica, not on
   every replica. When every replica is busy, the adapter waits for its rendezvous home.
4. **Fallback.** A request unrouted for ``max_wait_s`` (all its preferred replicas stayed full)
   also gets the least loaded replicas, so nothing starves behind a busy holder.

Base-model requests (no adapter) go to the least loaded replicas (ties broken by a fixed random
order). A request naming several adapters (an image mix) prefers replicas holding most of the
set (most held first, then least loaded), then cold-places the whole set by the rendezvous score
of its joined key, so the same mix keeps going to the same replica.

Eviction awareness: a placement (cold or spill) evicts something unless the replica has a free
slot, so among eligible replicas the score is, in order: load below ``spill_to``; a free slot;
how rarely the replica's next eviction victim (``victims``) is requested (aged counts this router
keeps, see ``observe``; bucketed by powers of two); how long ago that victim was last used
(bucketed by powers of two of milliseconds); then the rendezvous hash. Evicting the globally
least valuable adapter makes the fleet behave like one big frequency-aware cache. An adapter just
placed on a replica uses up its free slot or its first victim, so a burst of different cold
adapters spreads instead of piling on one replica.

Knobs (``Knobs``):
- ``spill_at`` (1.0): load at which a holder counts as busy. 1.0 = only when full.
- ``spill_to`` (0.5): a spill target must be below this load, so spilling relieves a hot adapter
  rather than moving the queue.
- ``spill_after_s`` (0.05): a request spills only after waiting this long for a busy holder
  (waiting one service time is often cheaper than loading the adapter elsewhere).
- ``place_below`` (1.0): a cold adapter is placed only on replicas below this load.
- ``max_wait_s`` (1.0): after waiting this long, a request also accepts the least loaded replicas.
- ``max_candidates`` (3): length of the preference list before fallbacks (Ray tries them in
  order, each asked for room, and backs off when all refuse).
- ``fallbacks`` (2): least loaded replicas appended once ``max_wait_s`` has passed.
- ``decay_every`` (0 = 10 x the fleet's adapter slots): request counts used to value victims
  halve after this many requests, so yesterday's hot adapter stops looking valuable.

Cost: ``Fleet`` keeps per-replica numpy arrays and an adapter -> holders index, updated
incrementally; one ranking is a few vector operations over the replicas (tens of microseconds
at 1,000 replicas), never a sort of the fleet.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

Kind = Literal["hit", "spill", "cold", "base", "fallback"]


@dataclass(frozen=True, slots=True)
class Knobs:
    """Routing knobs; see the module docstring for what each one does."""

    spill_at: float = 1.0
    spill_to: float = 0.5
    spill_after_s: float = 0.05
    place_below: float = 1.0
    max_wait_s: float = 1.0
    max_candidates: int = 3
    fallbacks: int = 2
    decay_every: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What the policy knows about one replica.

    ``resident``/``loading``: adapters ready / being loaded. ``ongoing``: requests in flight.
    ``max_ongoing``: the most requests it accepts. ``slots``: adapters its working set holds
    (0 = unknown). ``victims``: ``(adapter, last used, unix s)`` it would evict first, first
    victim first (optional).
    """

    id: str
    resident: frozenset[str] = frozenset()
    loading: frozenset[str] = frozenset()
    ongoing: int = 0
    max_ongoing: int = 1
    slots: int = 0
    victims: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class RequestView:
    """One request: its adapters (empty for the base model) and how long it has waited."""

    adapters: tuple[str, ...] = ()
    waited_s: float = 0.0
    now: float = 0.0  # unix seconds (0: the wall clock); simulators pass their own clock

    @classmethod
    def from_model_id(cls, model_id: str, waited_s: float = 0.0, now: float = 0.0) -> RequestView:
        """``""`` -> base; ``"a"`` -> one adapter; ``"a,b"`` -> a mix (sorted by the caller)."""
        return cls(tuple(a for a in model_id.split(",") if a), waited_s, now)

    @property
    def key(self) -> str:
        return ",".join(self.adapters)


@dataclass(frozen=True, slots=True)
class Decision:
    """Replica ids in preference order, and the kind of the first choice."""

    kind: Kind
    ids: list[str]
    # Per id, the kind a request routed there counts as (hit / spill / cold / fallback).
    kinds: dict[str, Kind] = field(default_factory=dict)


def with_placed(view: ReplicaView, adapters: set[str]) -> ReplicaView:
    """``view`` after ``adapters`` were sent there: loading, using up free slots, then victims."""
    new = adapters - view.resident - view.loading
    if not new:
        return view
    free = max(0, view.slots - len(view.resident | view.loading)) if view.slots else len(new)
    return replace(
        view, loading=view.loading | new, victims=view.victims[max(0, len(new) - free) :]
    )


def key_hash(key: str) -> int:
    """Stable 64-bit hash of an adapter key or replica id (identical in every process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _mix(seeds: np.ndarray, h: int) -> np.ndarray:
    """Rendezvous score of every replica for one key: splitmix64(seed ^ h), vectorised."""
    with np.errstate(over="ignore"):
        z = seeds ^ np.uint64(h)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def rendezvous_order(key: str, replica_ids: Iterable[str]) -> list[str]:
    """All replica ids by descending rendezvous score for ``key`` (for tests and tools)."""
    ids = list(replica_ids)
    seeds = np.array([key_hash(r) for r in ids], dtype=np.uint64)
    scores = _mix(seeds, key_hash(key))
    return [ids[i] for i in np.argsort(-scores.astype(np.float64), kind="stable")]


class Fleet:
    """The replicas one router knows about, indexed for fast ranking.

    Update with ``upsert`` (a replica's residency and numbers), ``set_ongoing`` (O(1), on every
    send and completion) and ``remove``; rank with ``decide``.
    """

    def __init__(self, knobs: Knobs | None = None) -> None:
        self.knobs = knobs or Knobs()
        self._views: dict[str, ReplicaView] = {}
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._holders: dict[str, dict[int, bool]] = {}  # adapter -> {replica index: resident?}
        self._seeds = np.zeros(0, dtype=np.uint64)
        self._ongoing = np.zeros(0)
        self._cap = np.ones(0)
        self._free_slot = np.zeros(0, dtype=bool)
        self._victim_t = np.zeros(0)
        # Aged request counts per adapter (observe), and the count of each replica's first victim.
        self._freq: dict[str, float] = {}
        self._observed = 0
        self._victim_of: dict[str, set[int]] = {}
        self._victim_f = np.zeros(0)
        self._tiebreak = np.zeros(0)
        self._hash_cache: dict[str, int] = {}

    # ---- updates -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, replica_id: str) -> bool:
        return replica_id in self._index

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def view(self, replica_id: str) -> ReplicaView:
        return self._views[replica_id]

    def holders(self, adapter: str) -> set[str]:
        return {self._ids[i] for i in self._holders.get(adapter, ())}

    def ongoing(self, replica_id: str) -> int:
        return int(self._ongoing[self._index[replica_id]])

    def set_replicas(self, views: Iterable[ReplicaView]) -> None:
        """Replace the whole fleet (O(total residency); replica sets change rarely)."""
        self._views = {v.id: v for v in views}
        self._rebuild()

    def upsert(self, view: ReplicaView) -> None:
        """Add a replica or update its residency and numbers."""
        i = self._index.get(view.id)
        if i is None:
            self._views[view.id] = view
            self._rebuild()
            return
        old = self._views[view.id]
        self._views[view.id] = view
        for a in (old.resident | old.loading) - (view.resident | view.loading):
            hs = self._holders.get(a)
            if hs is not None:
                hs.pop(i, None)
                if not hs:
                    del self._holders[a]
        for a in view.loading:
            self._holders.setdefault(a, {})[i] = False
        for a in view.resident:
            self._holders.setdefault(a, {})[i] = True
        self._ongoing[i] = view.ongoing
        self._cap[i] = max(1, view.max_ongoing)
        self._free_slot[i] = view.slots > 0 and len(view.resident | view.loading) < view.slots
        self._victim_t[i] = view.victims[0][1] if view.victims else np.nan
        self._set_victim(i, old.victims[0][0] if old.victims else None)

    def add_expected(self, replica_id: str, adapter: str) -> None:
        """Record that ``adapter`` was just sent to ``replica_id`` (counts as loading there)."""
        v = self._views.get(replica_id)
        if v is not None and adapter not in v.resident and adapter not in v.loading:
            self.upsert(with_placed(v, {adapter}))

    def remove(self, replica_id: str) -> None:
        if self._views.pop(replica_id, None) is not None:
            self._rebuild()

    def set_ongoing(self, replica_id: str, ongoing: int) -> None:
        i = self._index.get(replica_id)
        if i is not None:
            self._ongoing[i] = max(0, ongoing)

    def _rebuild(self) -> None:
        views = list(self._views.values())
        self._ids = [v.id for v in views]
        self._index = {r: i for i, r in enumerate(self._ids)}
        self._holders = {}
        for i, v in enumerate(views):
            for a in v.loading:
                self._holders.setdefault(a, {})[i] = False
            for a in v.resident:
                self._holders.setdefault(a, {})[i] = True
        self._seeds = np.array([key_hash(r) for r in self._ids], dtype=np.uint64)
        self._ongoing = np.array([float(v.ongoing) for v in views])
        self._cap = np.array([float(max(1, v.max_ongoing)) for v in views])
        self._free_slot = np.array(
            [v.slots > 0 and len(v.resident | v.loading) < v.slots for v in views], dtype=bool
        )
        # Fixed random tie-break (seeded by the ids, so every router agrees).
        self._tiebreak = (self._seeds >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 1e-6
        self._victim_t = np.array([v.victims[0][1] if v.victims else np.nan for v in views])
        self._victim_of = {}
        self._victim_f = np.zeros(len(views))
        for i in range(len(views)):
            self._set_victim(i, None)

    # ---- ranking -------------------------------------------------------------------------

    def _hash(self, key: str) -> int:
        h = self._hash_cache.get(key)
        if h is None:
            if len(self._hash_cache) > 100_000:
                self._hash_cache.clear()
            h = self._hash_cache[key] = key_hash(key)
        return h

    def _set_victim(self, i: int, old: str | None) -> None:
        if old is not None and old in self._victim_of:
            self._victim_of[old].discard(i)
        vs = self._views[self._ids[i]].victims
        if vs:
            self._victim_of.setdefault(vs[0][0], set()).add(i)
            self._victim_f[i] = self._freq.get(vs[0][0], 0.0)
        else:
            self._victim_f[i] = 0.0

    def observe(self, request: RequestView) -> None:
        """Count one request (once per request, not per ranking) for frequency-aware placement.

        Counts halve every ``knobs.decay_every`` requests (default: 10 x the fleet's slots).
        """
        for a in request.adapters:
            f = self._freq[a] = self._freq.get(a, 0.0) + 1.0
            for i in self._victim_of.get(a, ()):
                self._victim_f[i] = f
        self._observed += 1
        every = self.knobs.decay_every or max(
            100, 10 * int(sum(v.slots for v in self._views.values()))
        )
        if self._observed >= every:
            self._observed = 0
            self._freq = {a: f / 2 for a, f in self._freq.items() if f >= 1.0}
            self._victim_f /= 2

    def decide(self, request: RequestView) -> Decision:
        """Rank replicas for ``request``; see the module docstring."""
        k = self.knobs
        if not self._ids:
            return Decision("fallback", [])
        load = self._ongoing / self._cap
        now = request.now or time.time()
        if not request.adapters:
            ids = self._least_loaded(load, k.max_candidates, exclude=())
            return Decision("base", ids, dict.fromkeys(ids, "base"))

        out: list[int] = []
        kinds: dict[int, Kind] = {}
        held = self._held_counts(request.adapters)
        need = len(request.adapters)
        if held:
            full = [i for i, c in held.items() if c == need]
            spare = [i for i in (full or held) if load[i] < k.spill_at]
            spare.sort(key=lambda i: (-held[i], load[i], not self._resident(i, request)))
            for i in spare[: k.max_candidates]:
                out.append(i)
                kinds[i] = "hit" if held[i] == need else "cold"
            if not out:
                # Every holder is busy: a hot adapter. Add one more replica.
                mask = load < k.spill_to
                mask[list(held)] = False
                t = self._best_score(request.key, mask, now, load)
                if t is not None and request.waited_s >= k.spill_after_s:
                    out.append(t)
                    kinds[t] = "spill"
                busy = sorted(full or held, key=lambda i: load[i])
                for i in busy[: k.max_candidates]:
                    out.append(i)
                    kinds[i] = "hit" if held[i] == need else "cold"
        if not out:
            mask = load < k.place_below
            t = self._best_score(request.key, mask, now, load)
            if t is None:  # all busy: wait for the rendezvous home
                t = self._best_score(request.key, np.ones(len(self._ids), dtype=bool))
            out.append(t)
            kinds[t] = "cold"
        if request.waited_s >= k.max_wait_s:
            for i in self._least_loaded_idx(load, k.fallbacks, exclude=set(out)):
                out.append(i)
                kinds[i] = "fallback"
        ids = [self._ids[i] for i in out]
        return Decision(kinds[out[0]], ids, {self._ids[i]: kinds[i] for i in out})

    def _resident(self, i: int, request: RequestView) -> bool:
        return all(self._holders.get(a, {}).get(i, False) for a in request.adapters)

    def _held_counts(self, adapters: Sequence[str]) -> dict[int, int]:
        if len(adapters) == 1:
            return dict.fromkeys(self._holders.get(adapters[0], ()), 1)
        counts: dict[int, int] = {}
        for a in adapters:
            for i in self._holders.get(a, ()):
                counts[i] = counts.get(i, 0) + 1
        return counts

    def _best_score(
        self, key: str, mask: np.ndarray, now: float = 0.0, load: np.ndarray | None = None
    ) -> int | None:
        evicting = load is not None
        if not mask.any():
            return None
        # Score tiers in the top bits: lightly loaded (bit 63), free slot (62), rarely requested
        # victim (57-61), victim idle time (52-56), then the hash.
        score = _mix(self._seeds, self._hash(key)) >> np.uint64(12)
        if evicting:
            idle_ms = np.nan_to_num((now - self._victim_t) * 1000.0, nan=0.0)
            idle = np.clip(np.log2(1.0 + np.maximum(idle_ms, 0.0)), 0, 31).astype(np.uint64)
            rare = 31 - np.clip(np.log2(1.0 + self._victim_f), 0, 31).astype(np.uint64)
            score = score | (idle << np.uint64(52)) | (rare << np.uint64(57))
            score = score | (self._free_slot.astype(np.uint64) << np.uint64(62))
            score = score | ((load < self.knobs.spill_to).astype(np.uint64) << np.uint64(63))
        score = np.where(mask, score, np.uint64(0))
        i = int(np.argmax(score))
        return i if mask[i] else None

    def _least_loaded_idx(self, load: np.ndarray, n: int, exclude: set[int] | tuple) -> list[int]:
        key = load + self._tiebreak
        if exclude:
            key = key.copy()
            key[list(exclude)] = np.inf
        n = min(n, len(key) - len(exclude))
        if n <= 0:
            return []
        if n >= len(key):
            idx = np.argsort(key)
        else:
            idx = np.argpartition(key, n - 1)[:n]
            idx = idx[np.argsort(key[idx])]
        return [int(i) for i in idx[:n]]

    def _least_loaded(self, load: np.ndarray, n: int, exclude: tuple) -> list[str]:
        return [self._ids[i] for i in self._least_loaded_idx(load, n, exclude)]


def rank(
    replicas: Sequence[ReplicaView], request: RequestView, knobs: Knobs | None = None
) -> list[str]:
    """Replica ids for ``request`` in preference order (builds a ``Fleet``: O(replicas)).

    Long-lived callers (the router, the simulator) keep a ``Fleet`` and call ``decide``.
    """
    fleet = Fleet(knobs)
    fleet.set_replicas(replicas)
    return fleet.decide(request).ids
