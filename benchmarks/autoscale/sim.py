"""Discrete-event simulation of Serve autoscaling over an adapter fleet, driving the real code:
routing by ``serve_app.routing.policy.Fleet``, working sets ``adapters.adapter_cache.AdapterCache``,
pressure figures ``serve_app.autoscaling.AdapterPressure`` (on the simulated clock) and the
decision ``serve_app.autoscaling.desired_replicas``.

Policies: ``default`` is Serve's rule (ongoing requests, queued ones included, over
``target_ongoing_requests``); ``adapter_aware`` is ours. Both go through the same model of what
Serve's wrapper does to any policy every ``TICK_S``: ongoing requests averaged over
``look_back_s``, round up, clamp to min/max replicas, and
change the target only once the wanted direction has held for upscale/downscale delay s.
A new replica takes ``startup_s`` before it takes traffic (with ``warm``, it then loads what
routing/demand.py's ``warm_order`` names from the requests so far, as the app's replicas do,
before joining); a removed one stops receiving requests and finishes what it has. Requests arrive
as a Poisson stream whose rate follows ``rates`` (piecewise constant, one entry per
``phase_s``); a request not started within ``timeout_s`` is dropped (the client gave up).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from adapters.adapter_cache import AdapterCache
from benchmarks.simulate.sim import replica_view
from serve_app.autoscaling import AdapterPressure, Pressure, desired_replicas
from serve_app.routing.demand import warm_order
from serve_app.routing.policy import Fleet, RequestView

TICK_S = 1.0  # Serve's autoscaling decisions (its control loop runs every 0.1 s; 1 s is enough)
RETRY_S = 0.05
T0 = 1e9


@dataclass(eq=False)
class _Replica:
    id: str
    cache: AdapterCache
    pressure: AdapterPressure
    running: int = 0
    queue: deque = field(default_factory=deque)
    loading: dict[str, float] = field(default_factory=dict)
    last_used: dict[str, float] = field(default_factory=dict)
    draining: bool = False  # being removed: the router no longer sends it requests
    warming: bool = False  # loading adapters before it takes traffic

    @property
    def ongoing(self) -> int:
        return self.running + len(self.queue)


@dataclass
class Result:
    policy: str
    requests: int
    served: int
    dropped: int
    loads: int
    p50: float
    p99: float
    replica_s: float
    peak: int
    timeline: list[int]

    def row(self) -> dict:
        return self.__dict__


def simulate(
    policy: str,
    *,
    rates: list[float],
    phase_s: float = 30.0,
    adapters: int = 200,
    zipf: float = 1.0,
    slots: int = 8,
    k: int = 4,
    max_ongoing: int = 8,
    load_t: float = 1.0,
    service_t: float = 0.5,
    startup_s: float = 20.0,
    min_replicas: int = 1,
    max_replicas: int = 16,
    target_ongoing: float = 4.0,
    upscale_delay_s: float = 5.0,
    downscale_delay_s: float = 30.0,
    look_back_s: float = 10.0,
    timeout_s: float = 30.0,
    warm: bool = False,
    sample_s: float = 15.0,
    seed: int = 0,
) -> Result:
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, adapters + 1) ** zipf
    p /= p.sum()
    now = 0.0
    clock = [0.0]
    fleet = Fleet()
    reps: dict[str, _Replica] = {}
    starting: list[_Replica] = []
    events: list = []
    seq = 0
    names: list[str] = []
    arrival: list[float] = []
    latency: list[float] = []
    waiting: deque[int] = deque()
    dropped = 0
    loads = 0
    replica_s = 0.0
    timeline: list[int] = []
    target = min_replicas
    decided_at: float | None = None
    direction = 0
    popularity: dict[str, int] = {}
    history: deque[float] = deque(maxlen=max(1, int(look_back_s / TICK_S)))

    def push(t: float, kind: str, payload: object) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    def new_replica(t: float, startup: float) -> None:
        r = _Replica(
            f"r{len(reps) + len(starting):04d}",
            AdapterCache(slots),
            AdapterPressure(slots, clock=lambda: clock[0]),
        )
        starting.append(r)
        push(t + startup, "up", r)

    def publish(r: _Replica) -> None:
        if r.draining or r.warming:
            return  # not in the router's replica set
        fleet.upsert(replica_view(r, max_ongoing, slots))

    def load(r: _Replica, a: str, t: float) -> float:
        """Put ``a`` in ``r``'s working set; return when it is ready."""
        nonlocal loads
        r.cache.put(a, None, 0)
        loads += 1
        r.loading[a] = t + load_t
        push(t + load_t, "loaded", (r, a))
        r.pressure.on_pool_event(a, "ready", {"load_s": load_t})  # counted when it starts
        return t + load_t

    def start(r: _Replica, i: int, t: float) -> None:
        a = names[i]
        r.running += 1
        r.last_used[a] = T0 + t
        r.pressure.requested([a])
        if r.cache.touch(a):
            ready = r.loading.get(a, t)
        else:
            ready = load(r, a, t)
        r.cache.acquire(a)
        latency.append(ready + service_t - arrival[i])
        push(ready + service_t, "done", (r, i))

    def choose(i: int, t: float) -> _Replica | None:
        d = fleet.decide(RequestView((names[i],), t - arrival[i], T0 + t))
        for rid in d.ids:
            r = reps.get(rid)
            if r is not None and r.ongoing < max_ongoing:
                return r
        return None

    def admit(r: _Replica, i: int, t: float) -> None:
        fleet.started(r.id, (names[i],))
        if r.running < k:
            start(r, i, t)
        else:
            r.queue.append(i)
        publish(r)

    def route(i: int, t: float) -> bool:
        r = choose(i, t)
        if r is None:
            return False
        admit(r, i, t)
        return True

    def autoscale(t: float) -> None:
        nonlocal target, decided_at, direction
        live = [r for r in reps.values() if not r.draining]
        history.append(sum(r.ongoing for r in live) + len(waiting))
        ongoing = sum(history) / len(history)  # Serve averages over look_back_period_s
        if policy == "default":
            want = ongoing / target_ongoing
        else:
            figs = [Pressure(**r.pressure.stats()) for r in live]
            want = desired_replicas(len(live), ongoing, target_ongoing, figs)
        want = max(min_replicas, min(max_replicas, math.ceil(want)))
        d = (want > target) - (want < target)
        if d == 0 or d != direction:
            decided_at, direction = (t if d else None), d
        delay = upscale_delay_s if d > 0 else downscale_delay_s
        if d and t - decided_at >= delay:
            target, decided_at, direction = want, None, 0
        have = len(live) + len(starting)
        for _ in range(target - have):
            new_replica(t, startup_s)
        if target < have:
            while starting and target < len(live) + len(starting):
                starting.pop()  # not started yet: cancel
            for r in sorted(live, key=lambda r: r.ongoing)[: max(0, len(live) - target)]:
                r.draining = True
                fleet.remove(r.id)

    for _ in range(min_replicas):
        new_replica(0.0, 0.0)
    end = phase_s * len(rates)
    t = 0.0
    while True:
        rate = rates[min(int(t // phase_s), len(rates) - 1)]
        t += rng.expovariate(rate)
        if t >= end:
            break
        push(t, "arrive", None)
    push(0.0, "tick", None)
    while events:
        now, _, kind, payload = heapq.heappop(events)
        clock[0] = now
        if kind == "arrive":
            i = len(names)
            names.append(f"a{int(nprng.choice(adapters, p=p))}")
            arrival.append(now)
            popularity[names[i]] = popularity.get(names[i], 0) + 1
            fleet.observe(RequestView((names[i],)))
            if not route(i, now):
                waiting.append(i)
                push(now + RETRY_S, "retry", i)
        elif kind == "retry":
            if payload in waiting:
                if now - arrival[payload] > timeout_s:
                    waiting.remove(payload)
                    dropped += 1
                elif route(payload, now):
                    waiting.remove(payload)
                else:
                    push(now + RETRY_S, "retry", payload)
        elif kind == "up":
            r = payload
            if r not in starting:
                continue  # cancelled
            starting.remove(r)
            ready = now
            if warm:  # the app's rule (routing/demand.py), before traffic
                held = {a: len(fleet.holders(a)) for a in popularity}
                for a in warm_order(popularity, held, len(fleet) + 1, slots):
                    ready = max(ready, load(r, a, now))
                    r.loading.pop(a, None)
                # As in the app: warming is not thrash, pressure counts from the first request.
                r.pressure = AdapterPressure(slots, clock=lambda: clock[0])
            reps[r.id] = r
            if ready > now:
                r.warming = True
                push(ready, "warm", r)
            publish(r)
        elif kind == "warm":
            payload.warming = False
            if not payload.draining:
                publish(payload)
        elif kind == "loaded":
            r, a = payload
            if r.loading.get(a) == now:
                del r.loading[a]
            publish(r)
        elif kind == "done":
            r, i = payload
            r.running -= 1
            r.cache.release(names[i])
            fleet.finished(r.id, (names[i],))
            if r.queue:
                start(r, r.queue.popleft(), now)
            if r.draining and r.ongoing == 0:
                del reps[r.id]
            else:
                publish(r)
            for _ in range(min(len(waiting), 64)):
                j = waiting.popleft()
                if not route(j, now):
                    waiting.append(j)
        elif kind == "tick":
            replica_s += (len(reps) + len(starting)) * TICK_S  # started ones cost too
            if int(now) % int(sample_s) == 0:
                timeline.append(sum(1 for r in reps.values() if not r.draining))
            for r in [r for r in reps.values() if r.draining and r.ongoing == 0]:
                del reps[r.id]
            autoscale(now)
            if now < end or waiting or any(r.ongoing for r in reps.values()):
                push(now + TICK_S, "tick", None)
    served = len(latency)
    lat = np.array(latency) if latency else np.zeros(1)
    return Result(
        policy=policy + ("+warm" if warm else ""),
        requests=len(names),
        served=served,
        dropped=dropped,
        loads=loads,
        p50=float(np.percentile(lat, 50)),
        p99=float(np.percentile(lat, 99)),
        replica_s=replica_s,
        peak=max(timeline) if timeline else 0,
        timeline=timeline,
    )
