"""Adapter-aware replica ranking: a pure function of what replicas hold and how busy they are.

No Ray here: the Ray Serve router (router.py), the unit tests and the 1,000-replica simulator
(benchmarks/simulate) all drive this same code.

Algorithm, for a request naming adapter ``a`` (``load(r) = ongoing(r) / max_ongoing(r)``):

0. **Bounded share.** This router counts the requests it sent to each replica (aged like the
   adapter counts, see ``observe``; a new replica starts at the mean). A replica that got at
   least ``balance`` x (the mean + 1) is *over its share*: requests for adapters held elsewhere
   go elsewhere (consistent hashing with bounded loads, Mirrokni et al. 2018, with the adapter's
   holders as its first choices), it takes no copy of an adapter, and a new adapter goes to
   a replica under its share unless that would evict a more requested adapter than the over one
   would. This bounds max/mean requests per replica by about ``balance`` while a request still
   goes where its adapter is. Balance never evicts a more requested adapter than a load would
   evict without it (steps 2 and 3): that adapter would load again soon, and on a small fleet
   those loads were most of what the bound cost (benchmarks/simulate at 3 replicas x 4 slots
   with 2 s loads, four seeds: 298-305 loads per 1,000 requests, 289-295 with ``balance`` 0,
   against 312-325 when over-share replicas took no new adapter and copies for balance evicted
   any victim; at 1,000 replicas 104.3 per 1,000 and max/mean 1.22-1.23 either way).
1. **Hit.** Replicas holding ``a`` (resident, or a load already started) whose load is below
   ``spill_at`` and that are not over their share, least loaded first (join-shortest-queue among
   holders); resident before loading, then fewer requests sent, at equal load. When every holder
   is full (or over its share) the request queues for a holder, even one that is still loading
   ``a``: a load in progress is never a reason to load it somewhere else.
2. **Spill (hot adapter).** ``a`` is *hot* when its observed share of requests (aged counts this
   router keeps, see ``observe``) x the number of replicas x ``hot_factor`` exceeds its number of
   holders. A hot adapter whose holders are all at or above ``spill_to`` gains ONE more replica,
   put first: the best placement score (below) among non-holders below ``spill_to``. So a hot
   adapter grows copies early and stops growing once its holders have room, while a merely busy
   adapter (e.g. a burst for one cold adapter) stays on its one holder. When the adapter cools,
   its extra copies stop being chosen first and eviction reclaims them. Any adapter whose
   holders are all full or over their share, at least one over it, also gains a copy (then the
   holders follow, least over first) if its recent requests exceed the headroom the cap leaves
   a replica (``balance`` - 1 of the mean): a rarer one (e.g. a burst for a cold adapter) stays
   where it is, since a copy would cost a load to move almost nothing. Copies go only to
   replicas not over their share, and a copy for balance (not for a hot adapter's load) only
   to a free slot or over a victim requested at most once lately (aged count <= 1); without
   such a replica the request queues for its holder.
3. **Cold placement, with optional admission.** No holder: with admission on
   (``admit_wait_s`` > 0), while the request has waited less than the admission wait, only
   replicas below ``place_below`` that have a free slot or whose next eviction victim is no more
   requested than ``a`` are eligible; when none is, the request waits (an empty preference list:
   Ray backs off and asks again) rather than evicting a popular adapter. Off by default: over the
   pool's default lfu eviction the replica itself evicts its least requested idle adapter, and
   waiting saved no loads (benchmarks/simulate at 100 replicas: 140.8 per 1,000 with it, 141.3
   without) while it added the wait, up to a load time, to cold requests (routing_real, 32
   adapters: p99 2.25 s with it, 1.66 s without). Over lru replicas it saves about 4% of loads.
   Whatever the wait, until ``max_wait_s`` a *guarded* replica is never eligible: one without a
   free slot that holds an adapter wanted by requests queued in this router (``waiting``) and
   held nowhere else, so evicting it would make them load it again (in a burst of cold
   adapters, the requests still queued for one would otherwise lose it to the next).
   Among eligible replicas the score is, in order (when several requests for ``a`` are queued, a
   replica with room for all of them comes first, so a burst's requests go to one replica
   together): a free slot (an eviction costs a load later for certain); the adapter's files on
   the replica's node (``local``, from its disk cache: loading there reads the disk, elsewhere it
   downloads first, seconds for a large adapter from S3; also for a spill copy); a replica
   loading no other adapter (a load takes a batch slot for its whole duration, and two on one
   replica stall everything queued there; with the free slot first, a burst while replicas fill
   stacks loads rather than evicting, and a client that sends the next adapter as soon as it has
   the last answer, before this router has seen that request finish, no longer evicts one
   beside a free slot: tests/cluster/test_multinode.py); how rarely the replica's next victim
   (``victims``) is requested (bucketed by powers of two); not over its share (step 0); load
   below ``spill_to``; no more requests sent than the mean (step 0); how long ago that victim
   was last used (powers of two of milliseconds); then the rendezvous hash of ``a``, fixed per
   (adapter, replica), so every router instance picks the same home without talking to the
   others and a burst for one cold adapter loads it on one replica.
   A replica's victim is the first adapter of its reported eviction order (``victims``, in use
   or not) that this router has no request in flight for (``started``/``finished``) and, if
   possible, has not sent a request for since the replica's last report (under lru or lfu such
   an adapter moved back in the order): the one the replica's own pool would evict. A replica
   with no such victim (everything in use) is never a cheap target. An adapter just placed uses
   up the replica's free slot or evicts its victim at once (it stops counting as a holder), so a
   burst of different cold adapters spreads, and no request is sent as a "hit" to an adapter the
   placement evicted. When no replica is eligible the request waits in the router (an empty
   preference list); past ``max_wait_s`` it goes to its rendezvous home, busy or not.
4. **Fallback.** A request unrouted for ``max_wait_s`` also gets the least loaded replicas, so
   nothing starves behind a stuck holder.

Base-model requests (no adapter) go to the least loaded replicas (ties broken by a fixed random
order). A request naming several adapters (an image mix) prefers replicas holding most of the
set (most held first, then least loaded), then cold-places the whole set by the rendezvous score
of its joined key, so the same mix keeps going to the same replica.

Knobs (``Knobs``):
- ``spill_at`` (1.0): load at which a holder counts as full. 1.0 = only when full.
- ``spill_to`` (0.5): a hot adapter spills once all its holders reach this load, and only to a
  replica below it, so spilling relieves the adapter rather than moving the queue.
- ``hot_factor`` (1.0): how eagerly an adapter counts as hot (see 2). 1.0 with 3 replicas: an
  adapter with more than 1/3 of requests wants a second copy, more than 2/3 a third.
- ``hot_min_requests`` (20): no adapter is hot, and no replica over its share, before the router
  has counted this many requests.
- ``balance`` (1.2): a replica that got this many times (the mean + 1) of the requests is over
  its share (step 0); 0 turns shares off. Lower balances better and loads more copies.
- ``place_below`` (1.0): a cold adapter is placed only on replicas below this load.
- ``admit_wait_s`` (0: off): how long a cold adapter waits for a replica whose victim is no more
  popular than itself (step 3). Keep it to a few service times: it is latency added to every
  cold request that finds no cheap victim; worth it over lru replicas only.
- ``max_wait_s`` (3.0): after waiting this long, a request also accepts the least loaded replicas
  and guarded ones.
- ``wait_per_load`` (1.0): both waits above stretch with what loads cost: the admission wait
  (when on) to at least this many times the fleet's measured load time (the median of the
  replicas' ``load_s``), the max wait to at least twice that. Waiting for a cheap victim is
  worth up to the load that evicting a popular adapter would cost later (ski rental), so where
  loads take seconds (large adapters fetched from S3) a cold request waits seconds, not 50 ms,
  before it evicts; where loads are ~0.1 s nothing changes. 0 keeps the knobs as they are.
- ``max_candidates`` (3): length of the preference list before fallbacks (Ray tries them in
  order, each asked for room, and backs off when all refuse).
- ``fallbacks`` (2): least loaded replicas appended once ``max_wait_s`` has passed.
- ``decay_every`` (0 = 10 x the fleet's adapter slots, at least 100): request counts halve after
  this many requests, so yesterday's hot adapter stops looking valuable or hot.

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
    hot_factor: float = 1.0
    hot_min_requests: int = 20
    place_below: float = 1.0
    admit_wait_s: float = 0.0
    max_wait_s: float = 3.0
    wait_per_load: float = 1.0
    balance: float = 1.2
    max_candidates: int = 3
    fallbacks: int = 2
    decay_every: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What the policy knows about one replica.

    ``resident``/``loading``: adapters ready / being loaded. ``ongoing``: requests in flight.
    ``max_ongoing``: the most requests it accepts. ``slots``: adapters its working set holds
    (0 = unknown). ``victims``: ``(adapter, last used, unix s)`` it would evict first, first
    victim first (optional). ``load_s``: its recent cold-load time, seconds (0 = unknown).
    ``local``: adapters whose files are on its node's disk (a load there needs no download).
    """

    id: str
    resident: frozenset[str] = frozenset()
    loading: frozenset[str] = frozenset()
    ongoing: int = 0
    max_ongoing: int = 1
    slots: int = 0
    victims: tuple[tuple[str, float], ...] = ()
    load_s: float = 0.0
    local: frozenset[str] = frozenset()


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


def with_placed(view: ReplicaView, adapters: set[str], evictable: Sequence[str]) -> ReplicaView:
    """``view`` after ``adapters`` were sent there: they are loading, use up its free slots, then
    evict adapters from ``evictable`` in order (which stop counting as resident)."""
    new = adapters - view.resident - view.loading
    if not new:
        return view
    free = max(0, view.slots - len(view.resident | view.loading)) if view.slots else len(new)
    gone = set(evictable[: max(0, len(new) - free)])
    # NOTE: the victims go now, not when the replica reports it: until then a request for one
    # would be sent here as a hit and load it again.
    return replace(_without(view, gone), loading=view.loading | new)


def _without(view: ReplicaView, gone: set[str]) -> ReplicaView:
    """``view`` with the adapters ``gone`` evicted: no longer resident, nor victims."""
    return replace(
        view,
        resident=view.resident - gone,
        victims=tuple(v for v in view.victims if v[0] not in gone),
    )


def _free_slot(view: ReplicaView, slots_hint: int = 0) -> bool:
    """Whether ``view`` can take one more adapter without evicting. A replica that has not
    reported its capacity yet (``slots`` 0: it just started, its first report is on its way) is
    taken to have ``slots_hint`` (the deployment's configured slots, or what its peers reported:
    replicas of one deployment share a config), or, with no hint, counts as free while it holds
    nothing: without that, cold adapters would go to the replicas that did report, evicting
    there, until its first report lands (tests/cluster/test_multinode.py: a fourth adapter
    evicted one beside a free slot, once with one replica yet to report, once with none)."""
    held = len(view.resident | view.loading)
    slots = view.slots or slots_hint
    return held < slots if slots > 0 else held == 0


def copies_wanted(share: float, replicas: int, hot_factor: float) -> float:
    """Replicas that should hold an adapter with this share of requests: step 2's rule (it is hot,
    and spills to one more replica, while fewer hold it). routing/demand.py warms by it too."""
    return share * replicas * hot_factor


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


def _log2_bucket(x: np.ndarray) -> np.ndarray:
    """``floor(log2(1 + x))`` clipped to 0..31: which power-of-two bucket each value is in."""
    return np.clip(np.log2(1.0 + x), 0, 31).astype(np.int64)


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

    def __init__(self, knobs: Knobs | None = None, slots: int = 0) -> None:
        """``slots``: adapters each replica holds, as the deployment configures them (0:
        unknown); a replica yet to report its own is taken to have these (see _free_slot)."""
        self.knobs = knobs or Knobs()
        self._views: dict[str, ReplicaView] = {}
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._holders: dict[str, dict[int, bool]] = {}  # adapter -> {replica index: resident?}
        self._local: dict[str, set[int]] = {}  # adapter -> replicas with its files on their disk
        self._seeds = np.zeros(0, dtype=np.uint64)
        self._ongoing = np.zeros(0)
        self._cap = np.ones(0)
        self._free_slot = np.zeros(0, dtype=bool)
        self._victim_t = np.zeros(0)
        self._loading_n = np.zeros(0)  # adapters each replica is loading now
        self._slots_hint = slots  # configured, or the most any replica reported (_free_slot)
        # Adapters whose load this router saw end on each replica (a request for it finished),
        # until a report no longer shows them loading: see _without_ended.
        self._ended: dict[str, set[str]] = {}
        self._load_s = np.zeros(0)  # each replica's reported load time (0: none yet)
        self._waits = (self.knobs.admit_wait_s, self.knobs.max_wait_s)  # see _set_waits
        # Aged request counts per adapter (observe), and the count of each replica's first victim.
        self._freq: dict[str, float] = {}
        self._observed = 0
        self._total = 0.0
        self._victim_of: dict[str, set[int]] = {}
        self._victim: list[str | None] = []  # each replica's first victim not in use
        # Requests this router has in flight, per replica and adapter (see ``started``).
        self._in_use: dict[str, dict[str, int]] = {}
        # Adapters this router sent to a replica since its last report (they moved back in its
        # eviction order, whatever the policy: lru or lfu).
        self._used_since: dict[str, set[str]] = {}
        # Requests queued in this router, per adapter (``waiting``): they guard its last holder.
        self._wanted: dict[str, int] = {}
        self._victim_f = np.zeros(0)
        self._guarded = np.zeros(0, dtype=bool)  # see _set_victim
        self._tiebreak = np.zeros(0)
        self._sent = np.zeros(0)  # aged count of requests this router sent to each replica
        self._sent_sum = 0.0
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

    def upsert(self, view: ReplicaView, reported: bool = True) -> None:
        """Add a replica or update its residency and numbers.

        ``reported``: the view comes from the replica itself (not from this router's guesses), so
        its victim order already reflects every use until now.
        """
        if reported:
            self._used_since.pop(view.id, None)
            view = self._without_doomed(self._without_ended(view))
        i = self._index.get(view.id)
        if i is None or view.slots > self._slots_hint:
            # A new replica, or the first report of a capacity (every replica yet to report its
            # own is taken to have it, see _free_slot): rebuild the arrays.
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
        if view.local is not old.local:
            for a in old.local - view.local:
                on = self._local.get(a)
                if on is not None:
                    on.discard(i)
                    if not on:
                        del self._local[a]
            for a in view.local - old.local:
                self._local.setdefault(a, set()).add(i)
        self._ongoing[i] = view.ongoing
        self._loading_n[i] = len(view.loading)
        self._cap[i] = max(1, view.max_ongoing)
        self._free_slot[i] = _free_slot(view, self._slots_hint)
        if view.load_s != self._load_s[i]:
            self._load_s[i] = view.load_s
            self._set_waits()
        self._set_victim(i)

    def _without_ended(self, view: ReplicaView) -> ReplicaView:
        """``view`` with the loads this router saw end (``finished``) resident: a report taken
        before the end can land after it (the controller relays pushes within a tick or more),
        and a replica counted as loading loses cold placements to one that must evict (in
        tests/cluster/test_multinode.py, once). Forgotten once a report no longer shows them
        loading (resident, or gone)."""
        ended = self._ended.get(view.id)
        if not ended:
            return view
        stale = view.loading & ended
        ended &= stale
        if not ended:
            del self._ended[view.id]
        if not stale:
            return view
        return replace(view, resident=view.resident | stale, loading=view.loading - stale)

    def _without_doomed(self, view: ReplicaView) -> ReplicaView:
        """``view`` less the adapters its own pool is about to evict: a replica that reports
        more adapters held and loading than its slots evicts its first idle victims (those this
        router has no request in flight for first) when the loads finish. The report is true when
        taken, but a request sent there as a hit for a doomed adapter would load it again,
        evicting whatever is idle then (in routing_real's logs, the hottest adapter)."""
        over = len(view.resident | view.loading) - view.slots if view.slots else 0
        if over <= 0:
            return view
        busy = self._in_use.get(view.id, {})
        order = [a for a, _ in view.victims if a in view.resident]
        order = [a for a in order if a not in busy] + [a for a in order if a in busy]
        return _without(view, set(order[:over]))

    def place(self, replica_id: str, adapters: Iterable[str]) -> None:
        """Record that ``adapters`` were just sent to ``replica_id``: they count as loading there
        and evict its next victims (``with_placed``) until the replica reports."""
        v = self._views.get(replica_id)
        if v is None:
            return
        placed = with_placed(v, set(adapters), self._evictable(self._index[replica_id]))
        if placed is not v:
            self.upsert(placed, reported=False)

    def remove(self, replica_id: str) -> None:
        if self._views.pop(replica_id, None) is not None:
            self._rebuild()

    def set_ongoing(self, replica_id: str, ongoing: int) -> None:
        i = self._index.get(replica_id)
        if i is not None:
            self._ongoing[i] = max(0, ongoing)

    def _rebuild(self) -> None:
        views = list(self._views.values())
        sent = {r: self._sent[i] for r, i in self._index.items()}
        # NOTE: a new replica joins at the mean: at 0 it would take every request until even.
        mean = float(np.mean(list(sent.values()))) if sent else 0.0
        self._ids = [v.id for v in views]
        self._index = {r: i for i, r in enumerate(self._ids)}
        self._holders = {}
        self._local = {}
        for i, v in enumerate(views):
            for a in v.loading:
                self._holders.setdefault(a, {})[i] = False
            for a in v.resident:
                self._holders.setdefault(a, {})[i] = True
            for a in v.local:
                self._local.setdefault(a, set()).add(i)
        self._seeds = np.array([key_hash(r) for r in self._ids], dtype=np.uint64)
        self._ongoing = np.array([float(v.ongoing) for v in views])
        self._cap = np.array([float(max(1, v.max_ongoing)) for v in views])
        self._loading_n = np.array([float(len(v.loading)) for v in views])
        self._load_s = np.array([float(v.load_s) for v in views])
        self._set_waits()
        self._slots_hint = max([self._slots_hint, *(v.slots for v in views)])
        self._free_slot = np.array([_free_slot(v, self._slots_hint) for v in views], dtype=bool)
        # Fixed random tie-break (seeded by the ids, so every router agrees).
        self._tiebreak = (self._seeds >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 1e-6
        self._sent = np.array([sent.get(v.id, mean) for v in views])
        self._sent_sum = float(self._sent.sum())
        self._victim_t = np.full(len(views), np.nan)
        self._victim_of = {}
        self._victim = [None] * len(views)
        self._victim_f = np.zeros(len(views))
        self._guarded = np.zeros(len(views), dtype=bool)
        self._in_use = {r: c for r, c in self._in_use.items() if r in self._index}
        self._ended = {r: e for r, e in self._ended.items() if r in self._index}
        self._used_since = {r: u for r, u in self._used_since.items() if r in self._index}
        for i in range(len(views)):
            self._set_victim(i)

    def _set_waits(self) -> None:
        """(admission wait, max wait): the knobs, stretched to the fleet's measured load time
        (``wait_per_load``; the median over replicas that reported one)."""
        k = self.knobs
        known = self._load_s[self._load_s > 0]
        cost = k.wait_per_load * float(np.median(known)) if known.size else 0.0
        admit = max(k.admit_wait_s, cost) if k.admit_wait_s else 0.0  # 0: admission off
        self._waits = (admit, max(k.max_wait_s, 2 * cost))

    @property
    def waits(self) -> tuple[float, float]:
        """The admission and max waits in force now (seconds)."""
        return self._waits

    # ---- ranking -------------------------------------------------------------------------

    def _hash(self, key: str) -> int:
        h = self._hash_cache.get(key)
        if h is None:
            if len(self._hash_cache) > 100_000:
                self._hash_cache.clear()
            h = self._hash_cache[key] = key_hash(key)
        return h

    def _evictable(self, i: int) -> list[str]:
        """What replica ``i``'s own pool would evict next, as far as this router knows: its
        reported victims not in use here, those not used here since its report first (under lru
        or lfu a use moves an adapter back in the order). None while it is *guarded*: it could
        evict an adapter wanted here (requests for it wait in this router) and held nowhere
        else.
        """
        if self._guarded[i]:
            return []
        rid = self._ids[i]
        busy = self._in_use.get(rid, {})
        used = self._used_since.get(rid, ())
        idle = [a for a, _ in self._views[rid].victims if a not in busy]
        return [a for a in idle if a not in used] + [a for a in idle if a in used]

    def _set_victim(self, i: int) -> None:
        """Recompute replica ``i``'s guard and next victim (the first of ``_evictable``)."""
        old = self._victim[i]
        if old is not None and old in self._victim_of:
            self._victim_of[old].discard(i)
        view = self._views[self._ids[i]]
        # NOTE: any adapter it holds, not only the estimated first victim: one in use now may be
        # idle, and first in the replica's own order, by the time a newcomer arrives there.
        self._guarded[i] = not self._free_slot[i] and any(
            a in self._wanted and len(self._holders.get(a, ())) == 1
            for a in view.resident | view.loading
        )
        order = self._evictable(i)
        v = order[0] if order else None
        self._victim[i] = v
        if v is not None:
            self._victim_of.setdefault(v, set()).add(i)
            self._victim_f[i] = self._freq.get(v, 0.0)
            self._victim_t[i] = dict(view.victims)[v]
        else:  # nothing evictable now (all in use, wanted, or just placed): not a cheap target
            self._victim_f[i] = 0.0 if self._free_slot[i] else np.inf
            self._victim_t[i] = np.nan

    def started(self, replica_id: str, adapters: Iterable[str]) -> None:
        """A request using ``adapters`` was sent to ``replica_id``: they are in use there."""
        counts = self._in_use.setdefault(replica_id, {})
        for a in adapters:
            counts[a] = counts.get(a, 0) + 1
        self._used_since.setdefault(replica_id, set()).update(adapters)
        if replica_id in self._index:
            self._sent[self._index[replica_id]] += 1
            self._sent_sum += 1
            self._set_victim(self._index[replica_id])

    def finished(self, replica_id: str, adapters: Iterable[str]) -> None:
        """A request ``started`` on ``replica_id`` completed: its adapters are no longer in use
        by it, and no longer loading there (the request ran, so the load ended)."""
        adapters = set(adapters)
        counts = self._in_use.get(replica_id, {})
        for a in adapters:
            n = counts.pop(a, 0) - 1
            if n > 0:
                counts[a] = n
        view = self._views.get(replica_id)
        if view is not None and view.loading & adapters:
            # NOTE: the replica's own report of the load's end can land after the next decision;
            # until then it would count as loading, and cold placement prefers a replica loading
            # nothing, so an adapter went to a full replica, evicting, beside a free slot
            # (tests/cluster/test_multinode.py, once). A failed load is reported as such.
            done = view.loading & adapters
            self._ended.setdefault(replica_id, set()).update(done)
            self.upsert(
                replace(view, resident=view.resident | done, loading=view.loading - done),
                reported=False,
            )
        elif replica_id in self._index:
            self._set_victim(self._index[replica_id])

    def waiting(self, adapters: Iterable[str], n: int) -> None:
        """``n`` = +1: a request for ``adapters`` is queued here; -1: a replica accepted it."""
        for a in adapters:
            w = self._wanted.get(a, 0) + n
            if w > 0:
                self._wanted[a] = w
            else:
                self._wanted.pop(a, None)
            if w <= 1:  # the adapter became wanted, or stopped being wanted
                for i in self._holders.get(a, ()):
                    self._set_victim(i)

    def in_use(self, replica_id: str) -> set[str]:
        return set(self._in_use.get(replica_id, ()))

    def observe(self, request: RequestView) -> None:
        """Count one request (once per request, not per ranking) for frequency-aware placement.

        Counts halve every ``knobs.decay_every`` requests (default: 10 x the fleet's slots).
        """
        for a in request.adapters:
            f = self._freq[a] = self._freq.get(a, 0.0) + 1.0
            self._total += 1.0
            for i in self._victim_of.get(a, ()):
                self._victim_f[i] = f
        self._observed += 1
        every = self.knobs.decay_every or max(
            100, 10 * int(sum(v.slots for v in self._views.values()))
        )
        if self._observed >= every:
            self._observed = 0
            self._freq = {a: f / 2 for a, f in self._freq.items() if f >= 1.0}
            self._total /= 2
            self._victim_f /= 2
            self._sent /= 2
            self._sent_sum /= 2

    def decide(self, request: RequestView) -> Decision:
        """Rank replicas for ``request``: holders (and a spill copy when hot), else cold
        placement, then fallbacks once it has waited ``max_wait_s``; see the module docstring."""
        if not self._ids:
            return Decision("fallback", [])
        load = self._ongoing / self._cap
        if not request.adapters:
            ids = self._least_loaded(load, self.knobs.max_candidates, exclude=())
            return Decision("base", ids, dict.fromkeys(ids, "base"))
        now = request.now or time.time()
        ranked = self._holders_first(request, load, now)
        if not ranked:
            home = self._cold_placement(request, load, now)
            if home is None:  # no eligible replica: wait in the router
                return Decision("cold", [])
            ranked = [(home, "cold")]
        if request.waited_s >= self._waits[1]:
            taken = {i for i, _ in ranked}
            ranked += [
                (i, "fallback") for i in self._least_loaded_idx(load, self.knobs.fallbacks, taken)
            ]
        return Decision(
            ranked[0][1],
            [self._ids[i] for i, _ in ranked],
            {self._ids[i]: kind for i, kind in ranked},
        )

    def _holders_first(
        self, request: RequestView, load: np.ndarray, now: float
    ) -> list[tuple[int, Kind]]:
        """Steps 1 and 2: replicas holding the adapter(s), least loaded first, after one more
        copy if the adapter is hot and its holders are busy. Empty when nothing holds it."""
        k = self.knobs
        held = self._held_counts(request.adapters)
        if not held:
            return []
        need = len(request.adapters)
        full = [i for i, c in held.items() if c == need]
        cap = self._share_cap()
        over = {i for i in held if self._sent[i] >= cap}
        spare = [i for i in (full or held) if load[i] < k.spill_at and i not in over]
        spare.sort(key=lambda i: (-held[i], load[i], not self._resident(i, request), self._sent[i]))
        out: list[tuple[int, Kind]] = []
        # One more copy for a hot adapter (by observed rate) whose holders are all half busy,
        # or for any adapter whose holders are full or over their share of requests.
        hot = self._hot(request, len(held))
        busy = hot and not any(load[i] < k.spill_to for i in spare)
        if busy or (not spare and over and self._worth_a_copy(request)):
            mask = (load < k.spill_to) & (self._sent < cap)
            if not busy:  # a copy for balance only: where it evicts nothing still requested
                mask &= self._free_slot | (self._victim_f <= 1.0)
            mask[list(held)] = False
            t = self._best_placement(request, mask, now, load, cold=False)
            if t is not None:
                out.append((t, "spill"))
        if not spare:
            # Every holder is full or over its share (after the new copy, if any): queue for a
            # holder, even one still loading it, rather than load it again.
            spare = sorted(full or held, key=lambda i: (i in over, load[i]))
        out += [(i, "hit" if held[i] == need else "cold") for i in spare[: k.max_candidates]]
        return out

    def _cold_placement(self, request: RequestView, load: np.ndarray, now: float) -> int | None:
        """Step 3: where to load an adapter nothing holds, or None to wait (guarded replicas
        and admission, both lifted by waiting)."""
        k = self.knobs
        admit_wait, max_wait = self._waits
        mask = load < k.place_below
        if request.waited_s < max_wait:
            # Never evict an adapter that requests queued here still want (they would load it
            # again): skip guarded replicas, or wait if every replica is.
            mask &= ~self._guarded
            if not mask.any():
                return None
        if request.waited_s < min(admit_wait, max_wait):
            # Admission: evict only a victim no more popular than this adapter (or use a free
            # slot); while no replica offers one, wait (an in-use cheap victim frees up within a
            # service time; a popular one evicted costs a load later).
            f = min(self._freq.get(a, 0.0) for a in request.adapters) + 1.0
            mask &= self._free_slot | (self._victim_f <= f)
            if not mask.any():
                return None
        want = max(self._wanted.get(a, 0) for a in request.adapters)
        t = self._best_placement(request, mask, now, load, cold=True, room_for=want)
        if t is None:  # all busy: wait for the rendezvous home
            t = int(np.argmax(self._rendezvous(request.key)))
        return t

    def _hot(self, request: RequestView, holders: int) -> bool:
        """Whether the adapter's observed share of traffic is more than ``holders`` replicas."""
        if len(request.adapters) != 1 or self._total < self.knobs.hot_min_requests:
            return False
        share = self._freq.get(request.adapters[0], 0.0) / self._total
        return copies_wanted(share, len(self._ids), self.knobs.hot_factor) > holders

    def _worth_a_copy(self, request: RequestView) -> bool:
        """Whether the adapter's recent requests exceed the headroom the cap leaves a replica
        (``balance`` - 1 of the mean): below that, a copy costs a load and moves almost nothing."""
        f = min(self._freq.get(a, 0.0) for a in request.adapters)
        return f * len(self._ids) >= (self.knobs.balance - 1.0) * self._total

    def _share_cap(self) -> float:
        """Requests sent (aged) from which a replica is over its share: ``balance`` x (the mean
        + 1); no cap before ``hot_min_requests`` requests or with ``balance`` 0."""
        if not self.knobs.balance or self._total < self.knobs.hot_min_requests:
            return np.inf
        return self.knobs.balance * (self._sent_sum / len(self._ids) + 1.0)

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

    def _rendezvous(self, key: str) -> np.ndarray:
        """Every replica's rendezvous score for ``key`` (fixed per key and replica)."""
        return _mix(self._seeds, self._hash(key))

    def _best_placement(
        self,
        request: RequestView,
        mask: np.ndarray,
        now: float,
        load: np.ndarray,
        *,
        cold: bool,
        room_for: int = 0,
    ) -> int | None:
        """The best replica in ``mask`` to load the request's adapter(s) on (None if the mask is
        empty).

        Criteria, most important first (see the module docstring, step 3 for ``cold``, step 2
        otherwise), each "more is better":
        1. (cold, ``room_for`` > 1 requests queued for it) room for all of them at once;
        2. a free adapter slot;
        3. the adapters' files on its node's disk (``local``): no download;
        4. cold: loading no other adapter; spill: lightly loaded (below ``spill_to``);
        5. how rarely its next victim is requested (powers of two of the aged count);
        6. not over its share of requests (step 0);
        7. (cold) lightly loaded;
        8. no more requests sent there than the mean;
        9. how long its next victim has been idle (powers of two of milliseconds);
        10. the rendezvous hash of the request's key, so every router picks the same replica.
        """
        idx = np.flatnonzero(mask)
        if not len(idx):
            return None
        light = load < self.knobs.spill_to
        idle_ms = np.maximum(np.nan_to_num((now - self._victim_t) * 1000.0, nan=0.0), 0.0)
        criteria: list[np.ndarray] = []
        if cold and room_for > 1:
            criteria.append(self._cap - self._ongoing >= np.minimum(room_for, self._cap))
        criteria.append(self._free_slot)
        if any(a in self._local for a in request.adapters):
            on_disk = np.zeros(len(self._ids))
            for a in request.adapters:
                on_disk[list(self._local.get(a, ()))] += 1
            criteria.append(on_disk)
        criteria.append(self._loading_n == 0 if cold else light)
        criteria.append(-_log2_bucket(self._victim_f))
        criteria.append(self._sent < self._share_cap())
        if cold:
            criteria.append(light)
        criteria.append(self._sent <= self._sent_sum / len(self._ids))
        criteria.append(_log2_bucket(idle_ms))
        criteria.append(self._rendezvous(request.key))
        # NOTE: np.lexsort sorts by its LAST key first, ascending: the best is the last row.
        best = np.lexsort([c[idx] for c in reversed(criteria)])[-1]
        return int(idx[best])

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
