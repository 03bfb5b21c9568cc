"""``python -m benchmarks.simulate``: the routing policy at fleet scale versus a built-in model.

Defaults: 1,000 replicas x 16 adapter slots, 100,000 adapters with Zipf(1.1) popularity,
40,000 requests arriving at 15% of pure service capacity (about 60% once adapter loads count),
4 requests served at once per replica (8 accepted), 0.2 s adapter load, 0.02 s service.
Prints loads, latency, load balance and the policy's decision time, and writes them to ``--out``
as JSON.
"""

import argparse
import json

import numpy as np

from benchmarks.routing.traces import belady_loads
from benchmarks.simulate.sim import simulate, zipf_sample
from serve_app.routing.policy import Knobs


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
    p.add_argument("--eviction", choices=["lru", "lfu"], default="lru")
    p.add_argument("--routers", default="ours,builtin,pow2")
    p.add_argument("--knobs", default="{}", help="JSON dict of policy.Knobs fields")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="simulate-results.json")
    a = p.parse_args()

    trace = zipf_sample(np.random.default_rng(a.seed), a.adapters, a.zipf, a.requests)
    bound = belady_loads([int(x) for x in trace], a.replicas * a.slots)
    print(
        f"{a.replicas} replicas x {a.slots} slots, {a.adapters} adapters Zipf({a.zipf}), "
        f"{a.requests} requests at {a.util:.0%} load, eviction {a.eviction}; "
        f"Belady bound {bound} loads"
    )
    print(
        f"{'router':8} {'loads':>7} {'/1k':>6} {'p50 s':>7} {'p99 s':>7} {'max/mean':>8} "
        f"{'req/s':>8} {'decide us':>9} {'wall s':>6}"
    )
    rows = []
    for router in a.routers.split(","):
        r = simulate(
            router,
            replicas=a.replicas,
            slots=a.slots,
            adapters=trace,
            k=a.k,
            max_ongoing=a.max_ongoing,
            util=a.util,
            clients=a.clients,
            eviction=a.eviction,
            knobs=Knobs(**json.loads(a.knobs)),
            seed=a.seed,
        )
        rows.append(r.row())
        print(
            f"{router:8} {r.loads:7d} {1000 * r.loads / r.requests:6.1f} {r.p50:7.3f} "
            f"{r.p99:7.3f} {r.max_over_mean:8.2f} {r.throughput:8.1f} "
            f"{r.decision_us:9.1f} {r.wall_s:6.1f}" + (f"  {r.kinds}" if r.kinds else "")
        )
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "belady_loads": bound, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
