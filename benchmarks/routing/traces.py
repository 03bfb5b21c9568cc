"""Seeded request traces for the routing benchmark, and Belady's optimal load count.

A trace is a list of phases; each phase is a list of adapter names sent by ``concurrency``
closed-loop clients in trace order (a burst phase sends all its requests at once).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    adapters: list[str]
    concurrency: int


@dataclass(frozen=True)
class Trace:
    name: str
    phases: list[Phase]
    note: str
    max_ongoing: int | None = None  # requests a replica accepts, if not the setup's

    @property
    def adapters(self) -> list[str]:
        return [a for p in self.phases for a in p.adapters]


def zipf_weights(n: int, s: float) -> list[float]:
    w = [1.0 / (k**s) for k in range(1, n + 1)]
    total = sum(w)
    return [x / total for x in w]


def _zipf(rng: random.Random, names: list[str], s: float, count: int) -> list[str]:
    return rng.choices(names, weights=zipf_weights(len(names), s), k=count)


def standard_traces(
    *, replicas: int, slots: int, requests: int, concurrency: int, seed: int = 7
) -> list[Trace]:
    """The four traces of issue 5, sized for ``replicas`` x ``slots`` adapter slots, and the hot
    one again on replicas that accept only 2 requests at once ("hot-2": issue 5 measured its hot
    trace with "each replica serving at most 2 requests at once"; the others accept the setup's
    ``max_ongoing``, queueing beyond what they serve)."""
    n = 4 * replicas * slots
    names = [f"ad{i:03d}" for i in range(n)]
    rng = random.Random(seed)
    shuffled = names[:]
    rng.shuffle(shuffled)  # popularity rank -> name, so hot names are not 'ad000', 'ad001'
    zipf = _zipf(random.Random(seed + 1), shuffled, 1.0, requests)
    half = requests // 2
    rotated = shuffled[n // 2 :] + shuffled[: n // 2]  # the cold half becomes the hot set
    rotate = zipf[:half] + _zipf(random.Random(seed + 2), rotated, 1.0, requests - half)
    hot = _zipf(random.Random(seed + 3), shuffled, 2.0, requests)
    warm = _zipf(random.Random(seed + 4), shuffled[:4], 1.0, requests // 4)
    cold = [f"burst{i:02d}" for i in range(20)]
    burst = [a for a in cold for _ in range(3)]  # 3 requests per adapter, all sent at once
    share = hot.count(shuffled[0]) / len(hot)
    return [
        Trace("zipf", [Phase(zipf, concurrency)], f"Zipf s=1.0 over {n} adapters"),
        Trace(
            "rotate",
            [Phase(rotate, concurrency)],
            f"Zipf s=1.0 over {n} adapters, hot set rotates at request {half}",
        ),
        Trace("hot", [Phase(hot, concurrency)], f"Zipf s=2.0: top adapter {share:.0%} of traffic"),
        Trace(
            "hot-2",
            [Phase(hot, concurrency)],
            "the hot trace, replicas accepting at most 2 requests (max_ongoing_requests=2)",
            max_ongoing=2,
        ),
        Trace(
            "burst",
            [Phase(warm, concurrency), Phase(burst, len(burst))],
            f"{len(warm)} warm-up requests over 4 adapters, then 20 cold adapters x 3 "
            "requests sent at once",
        ),
    ]


def belady_loads(sequence: list[str], capacity: int) -> int:
    """Loads (misses) of an optimal offline cache of ``capacity`` entries: a lower bound."""
    nxt: list[int] = [0] * len(sequence)
    last: dict[str, int] = {}
    for i in range(len(sequence) - 1, -1, -1):
        nxt[i] = last.get(sequence[i], len(sequence) + i)
        last[sequence[i]] = i
    cache: dict[str, int] = {}  # adapter -> its next use
    heap: list[tuple[int, str]] = []  # (-next use, adapter), lazily invalidated
    loads = 0
    for i, a in enumerate(sequence):
        if a not in cache:
            loads += 1
            if len(cache) >= capacity:
                while True:
                    neg, victim = heapq.heappop(heap)
                    if cache.get(victim) == -neg:
                        del cache[victim]
                        break
        cache[a] = nxt[i]
        heapq.heappush(heap, (-nxt[i], a))
    return loads
