"""Discrete-event simulation of adapter routing at fleet scale, driving the real policy code.

Each replica serves at most ``k`` requests at once (a GPU batch) and accepts at most
``max_ongoing``; its working set is ``adapters.adapter_cache.AdapterCache`` (lru or lfu), the
same structure the real pool uses. A request holds a service slot for the adapter load
(``load_t``, if missing) plus ``service_t``. Requests arrive as a Poisson stream at ``util`` x
the fleet's service capacity, or are sent by ``clients`` closed-loop clients. Routers:

- ``ours``: ``serve_app.routing.policy.Fleet.decide``, replica state updated on every event (a
  router that sees every push at once), tried in preference order. ``before``: the same with
  another version's ``Fleet`` (``fleet_cls``), for before/after tables from one run.
- ``builtin``: a model of Ray Serve's multiplex routing: a replica holding (or loading) the
  adapter, least loaded of two random ones with room; else, among up to 4 random replicas with
  room, the one with the fewest adapters (then least loaded). (Ray scans every replica for the
  fewest adapters; once every working set is full that is all of them, so sampling is the same.)
- ``pow2``: least loaded of two random replicas with room; no adapter affinity.

``eviction`` is the replicas' working-set policy: lru (Ray Serve's multiplexing evicts that way,
an ``OrderedDict`` per replica) or lfu (the pool's frequency-aware eviction, the app's default).

``disk`` > 0 gives each replica a node of its own with a disk cache of that many adapters (lru;
an adapter the replica unloads is marked used, as the app's ``Fetcher.keep`` does): a load whose
files are not there downloads first, ``download_t`` more, and ours is told which adapters each
node has (``ReplicaView.local``), as replicas report them. ``downloads`` counts those loads.

``warmup``: the first requests of the trace run but are not counted (loads, latency, balance), so
a long trace can be measured at steady state: from an empty fleet most loads are an adapter's
first, which any router pays (8,831 of about 9,800 on the default 40,000-request trace).

A request no replica accepts waits in the router queue; up to 64 waiting requests are retried,
oldest first, whenever a replica finishes one. Times are seconds of simulated time.

Balance: ``max_over_mean`` is the most requests one replica served over the mean;
``busy_max_over_mean`` the same for the slot-seconds each replica spent (adapter loads included),
what saturates first when requests differ (a cold request holds a slot 11x longer than a hit).
"""

from __future__ import annotations

import heapq
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapters.adapter_cache import AdapterCache
from serve_app.routing.policy import Fleet, Knobs, ReplicaView, RequestView

RETRY_S = 0.05  # router backoff while no replica is acceptable
T0 = 1e9  # simulated clock origin, in unix seconds (the policy ages victims by wall time)


@dataclass(eq=False)
class _Replica:
    id: str
    cache: AdapterCache
    running: int = 0
    queue: deque = field(default_factory=deque)
    loading: dict[str, float] = field(default_factory=dict)  # adapter -> load finish time
    last_used: dict[str, float] = field(default_factory=dict)
    served: int = 0
    loads: int = 0
    downloads: int = 0
    busy: float = 0.0  # slot-seconds: service and adapter loads
    disk: OrderedDict = field(default_factory=OrderedDict)  # adapters on its node's disk, lru

    @property
    def ongoing(self) -> int:
        return self.running + len(self.queue)


@dataclass
class Result:
    router: str
    requests: int
    loads: int
    mean_latency: float
    p50: float
    p99: float
    max_over_mean: float
    busy_max_over_mean: float
    throughput: float
    decision_us: float
    wall_s: float
    kinds: dict[str, int]
    downloads: int = 0

    def row(self) -> dict:
        return self.__dict__


def zipf_sample(rng: np.random.Generator, n_adapters: int, s: float, count: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n_adapters + 1) ** s
    p /= p.sum()
    return rng.choice(n_adapters, size=count, p=p)


def balanced_loads(adapters: np.ndarray, replicas: int, ratio: float) -> int:
    """Fewest loads any router needs for max/mean <= ``ratio`` on this trace: each adapter loads
    once per replica that serves it, and one replica serves at most ``ratio`` x the mean."""
    most = max(1, int(ratio * len(adapters) / replicas))
    return int(np.ceil(np.bincount(adapters) / most).sum())


def replica_view(r: Any, max_ongoing: int, slots: int) -> ReplicaView:
    """What a simulated replica publishes (``id``, ``cache``, ``loading``, ``ongoing``,
    ``last_used``), as the real one's RoutingStats."""
    keys = set(r.cache.keys())
    return ReplicaView(
        r.id,
        frozenset(keys - r.loading.keys()),
        frozenset(r.loading),
        r.ongoing,
        max_ongoing,
        slots,
        tuple((v, r.last_used.get(v, 0.0)) for v in r.cache.eviction_order(ignore_in_use=True)[:4]),
        local=frozenset(a for a in r.disk if a not in keys),
    )


def simulate(
    router: str,
    *,
    replicas: int,
    slots: int,
    adapters: np.ndarray,
    k: int = 4,
    max_ongoing: int = 8,
    load_t: float = 0.2,
    service_t: float = 0.02,
    util: float = 0.6,
    clients: int = 0,
    eviction: str = "lru",
    knobs: Knobs | None = None,
    seed: int = 0,
    fleet_cls: type = Fleet,
    warmup: int = 0,
    disk: int = 0,
    download_t: float = 0.0,
) -> Result:
    """Run one router over the adapter ids in ``adapters`` (one request each, in order); the first
    ``warmup`` requests are not counted."""
    rng = random.Random(seed)
    reps = [_Replica(f"r{i:04d}", AdapterCache(slots, policy=eviction)) for i in range(replicas)]
    ours = router in ("ours", "before")
    fleet = fleet_cls(knobs)
    fleet.set_replicas([ReplicaView(r.id, max_ongoing=max_ongoing, slots=slots) for r in reps])
    names = [f"a{int(a)}" for a in adapters]
    rate = util * replicas * k / service_t
    events: list = []  # (time, seq, kind, payload)
    seq = 0
    t = 0.0
    # Open loop: Poisson arrivals. Closed loop (clients > 0): each client sends its next request
    # when the previous one completes.
    for i in range(min(clients, len(names)) if clients else len(names)):
        t = 0.0 if clients else t + rng.expovariate(rate)
        events.append((t, seq, "arrive", i))
        seq += 1
    next_i = len(events)
    heapq.heapify(events)
    arrival = [0.0] * len(names)
    latency: list[float] = []
    waiting: deque[int] = deque()
    kinds: dict[str, int] = {}
    decide_s = 0.0
    decisions = 0

    def publish(r: _Replica) -> None:
        if ours:
            fleet.upsert(replica_view(r, max_ongoing, slots))

    def choose(i: int, now: float) -> _Replica | None:
        nonlocal decide_s, decisions
        a = names[i]
        if ours:
            t0 = time.perf_counter()
            d = fleet.decide(RequestView((a,), now - arrival[i], T0 + now))
            decide_s += time.perf_counter() - t0
            decisions += 1
            for rid in d.ids:
                r = reps[int(rid[1:])]
                if r.ongoing < max_ongoing:
                    kinds[d.kinds[rid]] = kinds.get(d.kinds[rid], 0) + 1
                    return r
            return None
        if router == "builtin":
            holders = [r for r in by_adapter.get(a, ()) if r.ongoing < max_ongoing]
            if holders:
                return _two(rng, holders)
            free = _sample_free(rng, reps, max_ongoing)
            if not free:
                return None
            return min(free, key=lambda r: (len(r.cache), r.ongoing))
        free = _sample_free(rng, reps, max_ongoing)
        return _two(rng, free) if free else None

    by_adapter: dict[str, set[_Replica]] = {}

    def start(r: _Replica, i: int, now: float) -> None:
        nonlocal seq
        a = names[i]
        r.running += 1
        r.last_used[a] = T0 + now
        resident = r.cache.touch(a)
        if resident and a in r.loading:
            done = r.loading[a] + service_t
        elif resident:
            done = now + service_t
        else:
            victims = r.cache.put(a, None, 0)
            for v in victims:
                by_adapter.get(v, set()).discard(r)
                r.last_used.pop(v, None)
                if v in r.disk:
                    r.disk.move_to_end(v)  # Fetcher.keep: an unloaded adapter's copy stays
            by_adapter.setdefault(a, set()).add(r)
            r.loads += i >= warmup
            took = load_t
            if disk:
                if a in r.disk:
                    r.disk.move_to_end(a)
                else:
                    took += download_t
                    r.downloads += i >= warmup
                    r.disk[a] = None
                    while len(r.disk) > disk:
                        r.disk.popitem(last=False)
            r.loading[a] = now + took
            heapq.heappush(events, (now + took, seq, "loaded", (r, a)))
            seq += 1
            done = now + took + service_t
        r.cache.acquire(a)
        if i >= warmup:
            r.busy += done - now
        heapq.heappush(events, (done, seq, "done", (r, i)))
        seq += 1

    def admit(r: _Replica, i: int, now: float) -> None:
        if ours:
            fleet.started(r.id, (names[i],))  # as the router does when it sends a request
        if r.running < k:
            start(r, i, now)
        else:
            r.queue.append(i)
        publish(r)

    wall0 = time.perf_counter()
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            arrival[payload] = now
            if ours:
                fleet.observe(RequestView((names[payload],)))
            r = choose(payload, now)
            if r is None:
                waiting.append(payload)
                heapq.heappush(events, (now + RETRY_S, seq, "retry", payload))
                seq += 1
            else:
                admit(r, payload, now)
        elif kind == "retry":
            # A router with nothing to send retries after a short backoff too (requests no replica
            # would accept are also retried whenever a replica finishes one, below).
            if payload in waiting:
                r = choose(payload, now)
                if r is None:
                    heapq.heappush(events, (now + RETRY_S, seq, "retry", payload))
                    seq += 1
                else:
                    waiting.remove(payload)
                    admit(r, payload, now)
        elif kind == "loaded":
            r, a = payload
            if r.loading.get(a) == now:
                del r.loading[a]
            publish(r)
        else:
            r, i = payload
            r.running -= 1
            r.cache.release(names[i])
            if ours:
                fleet.finished(r.id, (names[i],))
            if i >= warmup:
                r.served += 1
                latency.append(now - arrival[i])
            if clients and next_i < len(names):
                heapq.heappush(events, (now, seq, "arrive", next_i))
                seq += 1
                next_i += 1
            if r.queue:
                start(r, r.queue.popleft(), now)
            publish(r)
            for _ in range(min(len(waiting), 64)):
                j = waiting.popleft()
                rr = choose(j, now)
                if rr is None:
                    waiting.append(j)
                else:
                    admit(rr, j, now)
    wall = time.perf_counter() - wall0
    lat = np.array(latency)
    served = np.array([r.served for r in reps])
    busy = np.array([r.busy for r in reps])
    return Result(
        router=router,
        requests=len(names) - warmup,
        loads=sum(r.loads for r in reps),
        downloads=sum(r.downloads for r in reps),
        mean_latency=float(lat.mean()),
        p50=float(np.percentile(lat, 50)),
        p99=float(np.percentile(lat, 99)),
        max_over_mean=float(served.max() / served.mean()),
        busy_max_over_mean=float(busy.max() / busy.mean()),
        throughput=len(names) / now,
        decision_us=decide_s / decisions * 1e6 if decisions else 0.0,
        wall_s=wall,
        kinds=kinds,
    )


def _two(rng: random.Random, cands: list[_Replica]) -> _Replica:
    if len(cands) == 1:
        return cands[0]
    a, b = rng.sample(cands, 2)
    return a if a.ongoing <= b.ongoing else b


def _sample_free(rng: random.Random, reps: list[_Replica], cap: int) -> list[_Replica]:
    # Two random replicas with room (a few tries), else scan.
    picks = [r for r in rng.sample(reps, min(len(reps), 4)) if r.ongoing < cap]
    return picks or [r for r in reps if r.ongoing < cap]
