"""``python -m benchmarks.simulate``: the routing policy at fleet scale versus a built-in model.

Defaults: 1,000 replicas x 16 adapter slots, 100,000 adapters with Zipf(1.1) popularity,
40,000 requests arriving at 15% of pure service capacity (about 60% once adapter loads count),
4 requests served at once per replica (8 accepted), 0.2 s adapter load, 0.02 s service.
Prints loads, latency, load balance (requests and busy slot-seconds per replica, max/mean) and
the policy's decision time, and writes them to ``--out`` as JSON. ``--before DIR`` adds the
policy of another checkout (e.g. the main branch) as router ``before``, on the same trace.

Routers are named ``router[-lru|-lfu]``, the suffix naming the replicas' eviction: ``ours`` (and
``before``) runs over the app's default, the pool's frequency-aware ``lfu``; ``builtin`` and
``pow2`` over lru, as Ray Serve's multiplexing evicts; ``ours-lru`` and ``builtin-lfu`` are the
equalised rows. ``--warmup N`` runs the first N requests uncounted, to measure a full fleet
(steady state) rather than one still filling. ``--disk N --download-t S`` gives every replica a
node disk cache of N adapters: a load of one not there downloads first (S seconds more), and
the table counts those downloads.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.routing.traces import belady_loads
from benchmarks.simulate.sim import balanced_loads, simulate, zipf_sample
from serve_app.config import DEFAULT_EVICTION
from serve_app.routing.policy import Fleet, Knobs


def _fleet_from(checkout: str) -> type:
    """``Fleet`` from ``checkout``'s serve_app/routing/policy.py (pure: numpy and stdlib)."""
    path = Path(checkout) / "serve_app" / "routing" / "policy.py"
    spec = importlib.util.spec_from_file_location("policy_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Fleet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=1000)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--adapters", type=int, default=100_000)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--requests", type=int, default=40_000)
    p.add_argument("--util", type=float, default=0.15)
    p.add_argument("--clients", type=int, default=0, help="closed loop with N clients (0: open)")
    p.add_argument("--k", type=int, default=4, help="requests served at once per replica")
    p.add_argument("--max-ongoing", type=int, default=8)
    p.add_argument("--warmup", type=int, default=0, help="requests run first, not counted")
    p.add_argument("--routers", default="ours,ours-lru,builtin,builtin-lfu,pow2")
    p.add_argument("--before", default="", help="checkout whose policy runs as router 'before'")
    p.add_argument("--knobs", default="{}", help="JSON dict of policy.Knobs fields (ours)")
    p.add_argument("--load-t", type=float, default=0.2, help="seconds an adapter load takes")
    p.add_argument("--service-t", type=float, default=0.02, help="seconds a request takes")
    p.add_argument("--disk", type=int, default=0, help="adapters each node's disk cache holds")
    p.add_argument("--download-t", type=float, default=2.0, help="with --disk: download time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="simulate-results.json")
    a = p.parse_args()

    trace = zipf_sample(np.random.default_rng(a.seed), a.adapters, a.zipf, a.warmup + a.requests)
    head = (
        f"{a.replicas} replicas x {a.slots} slots, {a.adapters} adapters Zipf({a.zipf}), "
        f"{a.requests} requests at {a.util:.0%} load"
    )
    bound = balanced = None
    if a.warmup:  # NOTE: both bounds assume an empty fleet at the first counted request
        print(f"{head} after {a.warmup} uncounted (a full fleet)")
    else:
        bound = belady_loads([int(x) for x in trace], a.replicas * a.slots)
        balanced = balanced_loads(trace, a.replicas, 1.3)
        print(f"{head}; Belady bound {bound} loads; max/mean <= 1.3 needs >= {balanced} loads")
    print(
        f"{'router':11} {'loads':>7} {'/1k':>6} {'p50 s':>7} {'p99 s':>7} {'max/mean':>8} "
        f"{'busy m/m':>8} {'req/s':>8} {'decide us':>9} {'wall s':>6}"
    )
    routers = a.routers.split(",") + (["before"] if a.before else [])
    rows = []
    for name in routers:
        router, _, eviction = name.partition("-")
        eviction = eviction or (DEFAULT_EVICTION if router in ("ours", "before") else "lru")
        r = simulate(
            router,
            replicas=a.replicas,
            slots=a.slots,
            adapters=trace,
            k=a.k,
            max_ongoing=a.max_ongoing,
            util=a.util,
            clients=a.clients,
            eviction=eviction,
            knobs=None if router == "before" else Knobs(**json.loads(a.knobs)),
            seed=a.seed,
            fleet_cls=_fleet_from(a.before) if router == "before" else Fleet,
            warmup=a.warmup,
            disk=a.disk,
            download_t=a.download_t,
            load_t=a.load_t,
            service_t=a.service_t,
        )
        r.router = name
        rows.append(r.row())
        print(
            f"{name:11} {r.loads:7d} {1000 * r.loads / r.requests:6.1f} {r.p50:7.3f} "
            f"{r.p99:7.3f} {r.max_over_mean:8.2f} {r.busy_max_over_mean:8.2f} "
            f"{r.throughput:8.1f} {r.decision_us:9.1f} {r.wall_s:6.1f}"
            + (f"  downloads/1k {1000 * r.downloads / r.requests:.1f}" if a.disk else "")
            + (f"  {r.kinds}" if r.kinds else "")
        )
    base = next((r for r in rows if r["router"] == "builtin"), None)
    if base:
        print(
            "vs builtin (loads, p99"
            + (", downloads" if a.disk else "")
            + "): "
            + ", ".join(
                f"{r['router']} {r['loads'] / base['loads']:.2f}x {r['p99'] / base['p99']:.2f}x"
                + (
                    f" downloads {r['downloads'] / max(1, base['downloads']):.2f}x"
                    if a.disk
                    else ""
                )
                for r in rows
                if r is not base
            )
        )
    with open(a.out, "w") as f:
        json.dump(
            {"args": vars(a), "belady_loads": bound, "balanced_loads": balanced, "results": rows},
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
