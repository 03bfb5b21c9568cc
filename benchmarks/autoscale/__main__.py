"""``python -m benchmarks.autoscale``: adapter-aware autoscaling vs Serve's default policy in the
autoscaling simulator (benchmarks/autoscale/sim.py), same trace: a load that rises then falls,
over more adapters than one replica holds. Prints replicas over time, adapter loads per 1,000
requests, p50/p99 latency, dropped requests and replica-seconds; writes JSON to ``--out``.
"""

import argparse
import json

from benchmarks.autoscale.sim import simulate

RATES = "2,4,8,12,16,16,12,8,4,2,1,1"  # requests/s, one per phase


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default=RATES, help="requests/s per phase, comma-separated")
    p.add_argument("--phase-s", type=float, default=30.0)
    p.add_argument("--adapters", type=int, default=200)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--slots", type=int, default=8, help="adapters one replica holds")
    p.add_argument("--k", type=int, default=4, help="requests served at once per replica")
    p.add_argument("--max-ongoing", type=int, default=8)
    p.add_argument("--load-s", type=float, default=1.0, help="one adapter load")
    p.add_argument("--service-s", type=float, default=0.5, help="one request, adapter resident")
    p.add_argument("--startup-s", type=float, default=20.0, help="new replica until ready")
    p.add_argument("--max-replicas", type=int, default=16)
    p.add_argument("--target-ongoing", type=float, default=4.0)
    p.add_argument("--upscale-delay-s", type=float, default=5.0)
    p.add_argument("--downscale-delay-s", type=float, default=30.0)
    p.add_argument("--look-back-s", type=float, default=10.0)
    p.add_argument("--timeout-s", type=float, default=30.0, help="client gives up (dropped)")
    p.add_argument("--policies", default="default,adapter_aware,adapter_aware+warm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="autoscale-results.json")
    a = p.parse_args()
    rates = [float(x) for x in a.rates.split(",")]
    common = dict(
        rates=rates,
        phase_s=a.phase_s,
        adapters=a.adapters,
        zipf=a.zipf,
        slots=a.slots,
        k=a.k,
        max_ongoing=a.max_ongoing,
        load_t=a.load_s,
        service_t=a.service_s,
        startup_s=a.startup_s,
        max_replicas=a.max_replicas,
        target_ongoing=a.target_ongoing,
        upscale_delay_s=a.upscale_delay_s,
        downscale_delay_s=a.downscale_delay_s,
        look_back_s=a.look_back_s,
        timeout_s=a.timeout_s,
        seed=a.seed,
    )
    print(
        f"trace: {rates} req/s, {a.phase_s:.0f} s each; {a.adapters} adapters Zipf({a.zipf}); "
        f"{a.slots} slots, {a.k} at once, load {a.load_s}s, service {a.service_s}s, "
        f"startup {a.startup_s}s; target_ongoing_requests {a.target_ongoing}"
    )
    print(
        f"{'policy':20} {'requests':>8} {'dropped':>7} {'loads/1k':>8} {'p50 s':>6} "
        f"{'p99 s':>6} {'replica-s':>9} {'peak':>4}  replicas every 15 s"
    )
    rows = []
    for name in a.policies.split(","):
        policy, _, warm = name.partition("+")
        r = simulate(policy, warm=bool(warm), **common)
        rows.append(r.row())
        print(
            f"{r.policy:20} {r.requests:8d} {r.dropped:7d} {1000 * r.loads / r.requests:8.1f} "
            f"{r.p50:6.2f} {r.p99:6.2f} {r.replica_s:9.0f} {r.peak:4d}  "
            + " ".join(str(n) for n in r.timeline)
        )
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
