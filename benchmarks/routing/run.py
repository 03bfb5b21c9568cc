"""Run every router on every trace on real Ray Serve, print a table and write JSON.

Routers: ``ours`` (``AdapterAwareRouter`` + ``AdapterPool`` with the app's default eviction, and
``ours-lru`` with lru, as the built-in's replicas, on the Zipf, rotating and hot traces),
``builtin`` (Ray Serve's ``@serve.multiplexed`` replicas and its default multiplex routing),
``pow2`` (the pool replicas, lru, under Ray's power-of-two routing with no adapter id, so no
affinity).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace

import ray
from ray import serve

from benchmarks.routing.traces import Trace, belady_loads, standard_traces
from serve_app.config import DEFAULT_EVICTION
from serve_app.routing.router import request_router_config
from serve_app.routing.simulated import MuxReplica, PoolReplica


@dataclass(frozen=True)
class Setup:
    replicas: int = 3
    slots: int = 2
    k: int = 2
    max_ongoing: int = 4
    load_s: float = 0.2
    service_s: float = 0.02
    requests: int = 800  # as in the issue's own measurements
    concurrency: int = 8
    knobs: str = "{}"  # JSON of policy.Knobs fields for our router
    max_backoff_s: float = 0.05


@dataclass
class Row:
    trace: str
    router: str
    requests: int
    loads: int
    loads_per_1k: float
    p50_ms: float
    p99_ms: float
    throughput: float
    max_over_mean: float
    belady: int
    burst_loads_per_adapter: float | None = None
    burst_replicas_per_adapter: float | None = None
    burst_adapters_on_several_replicas: int | None = None
    routing: dict | None = None
    max_ongoing: int | None = None


def _app(router: str, s: Setup, eviction: str):
    args = dict(slots=s.slots, k=s.k, load_s=s.load_s, service_s=s.service_s, eviction=eviction)
    opts = dict(num_replicas=s.replicas, max_ongoing_requests=s.max_ongoing)
    if router == "builtin":
        return MuxReplica.options(**opts).bind(**args)
    if router == "pow2":
        return PoolReplica.options(**opts).bind(**args)
    cfg = request_router_config(
        json.loads(s.knobs), stats_period_s=1.0, max_backoff_s=s.max_backoff_s
    )
    return PoolReplica.options(**opts, request_router_config=cfg).bind(**args)


async def _drive(handle, trace: Trace, by_id: bool) -> tuple[list[float], list[dict], float]:
    latencies: list[float] = []
    replies: list[dict] = []
    t0 = time.perf_counter()
    for phase in trace.phases:
        queue = list(reversed(phase.adapters))

        async def client(queue: list[str] = queue) -> None:
            while queue:
                a = queue.pop()
                start = time.perf_counter()
                if by_id:
                    reply = await handle.options(multiplexed_model_id=a).remote()
                else:
                    reply = await handle.remote(a)
                latencies.append(time.perf_counter() - start)
                replies.append(reply)

        await asyncio.gather(*(client() for _ in range(phase.concurrency)))
    return latencies, replies, time.perf_counter() - t0


def run_one(trace: Trace, router: str, s: Setup) -> Row:
    eviction = "lru" if router in ("ours-lru", "builtin", "pow2") else DEFAULT_EVICTION
    name = f"bench-{trace.name}-{router}"
    s = replace(s, max_ongoing=trace.max_ongoing or s.max_ongoing)
    handle = serve.run(_app(router.removesuffix("-lru"), s, eviction), name=name, route_prefix=None)
    try:
        lat, replies, wall = asyncio.run(_drive(handle, trace, by_id=router != "pow2"))
        routing = _router_counts(handle)
    finally:
        serve.delete(name)
    per_replica: dict[str, int] = {}
    loads_by_replica: dict[str, int] = {}
    adapter_loads: dict[tuple[str, str], int] = {}
    for r in replies:
        per_replica[r["replica"]] = per_replica.get(r["replica"], 0) + 1
        loads_by_replica[r["replica"]] = max(loads_by_replica.get(r["replica"], 0), r["loads"])
        key = (r["replica"], r["adapter"])
        adapter_loads[key] = max(adapter_loads.get(key, 0), r["adapter_loads"])
    counts = list(per_replica.values()) + [0] * (s.replicas - len(per_replica))
    loads = sum(loads_by_replica.values())
    qs = statistics.quantiles(lat, n=100)
    row = Row(
        trace=trace.name,
        router=router,
        requests=len(lat),
        loads=loads,
        loads_per_1k=round(1000 * loads / len(lat), 1),
        p50_ms=round(1000 * statistics.median(lat), 1),
        p99_ms=round(1000 * qs[98], 1),
        throughput=round(len(lat) / wall, 1),
        max_over_mean=round(max(counts) / statistics.mean(counts), 2),
        belady=belady_loads(trace.adapters, s.replicas * s.slots),
        routing=routing,
        max_ongoing=s.max_ongoing,
    )
    if trace.name == "burst":
        burst = [a for a in trace.phases[-1].adapters]
        per_adapter = {a: 0 for a in burst}
        replicas_of = {a: 0 for a in burst}
        for (_, a), n in adapter_loads.items():
            if a in per_adapter:
                per_adapter[a] += n
                replicas_of[a] += 1 if n else 0
        row.burst_loads_per_adapter = round(statistics.mean(per_adapter.values()), 2)
        row.burst_replicas_per_adapter = round(statistics.mean(replicas_of.values()), 2)
        row.burst_adapters_on_several_replicas = sum(1 for n in replicas_of.values() if n > 1)
    return row


def _router_counts(handle) -> dict | None:
    # The handle's router lives in this process: read its decision counts (ours only).
    try:
        rr = handle._router._asyncio_router._request_router  # noqa: SLF001 (benchmark introspection)
        return dict(getattr(rr, "decision_counts", {})) or None
    except AttributeError:
        return None


def run_all(
    s: Setup, traces_filter: set[str] | None = None, routers_filter: set[str] | None = None
) -> list[Row]:
    traces = standard_traces(
        replicas=s.replicas, slots=s.slots, requests=s.requests, concurrency=s.concurrency
    )
    rows: list[Row] = []
    for trace in traces:
        if traces_filter and trace.name not in traces_filter:
            continue
        routers = ["ours", "builtin", "pow2"]
        if trace.name in ("zipf", "rotate", "hot", "hot-2"):
            routers.insert(1, "ours-lru")
        routers = [r for r in routers if not routers_filter or r in routers_filter]
        print(f"\n== {trace.name}: {trace.note} ({len(trace.adapters)} requests)", flush=True)
        base = None
        for router in routers:
            row = run_one(trace, router, s)
            rows.append(row)
            if router == "builtin":
                base = row
        _print_trace(trace, [r for r in rows if r.trace == trace.name], base)
    return rows


def _print_trace(trace: Trace, rows: list[Row], base: Row | None) -> None:
    print(
        f"{'router':9} {'loads':>6} {'/1k':>6} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>6} "
        f"{'max/mean':>8} {'loads x':>7} {'p99 x':>6} {'tput x':>6}  belady={rows[0].belady}"
    )
    for r in rows:
        ratio = ""
        if base is not None:
            ratio = (
                f"{r.loads / max(base.loads, 1):7.2f} {r.p99_ms / base.p99_ms:6.2f} "
                f"{r.throughput / base.throughput:6.2f}"
            )
        extra = ""
        if r.burst_loads_per_adapter is not None:
            extra = (
                f"  burst: {r.burst_loads_per_adapter} loads and "
                f"{r.burst_replicas_per_adapter} replicas per adapter, "
                f"{r.burst_adapters_on_several_replicas} on several replicas"
            )
        print(
            f"{r.router:9} {r.loads:6d} {r.loads_per_1k:6.1f} {r.p50_ms:7.1f} {r.p99_ms:7.1f} "
            f"{r.throughput:6.1f} {r.max_over_mean:8.2f} {ratio}{extra}"
            + (f"  {r.routing}" if r.routing else ""),
            flush=True,
        )


def main(
    s: Setup,
    out: str,
    traces_filter: set[str] | None = None,
    routers_filter: set[str] | None = None,
) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    try:
        t0 = time.time()
        rows = run_all(s, traces_filter, routers_filter)
        with open(out, "w") as f:
            json.dump({"setup": asdict(s), "rows": [asdict(r) for r in rows]}, f, indent=1)
        print(f"\nwrote {out} ({time.time() - t0:.0f} s)")
    finally:
        serve.shutdown()
        ray.shutdown()
