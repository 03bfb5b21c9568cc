"""``python -m benchmarks.routing``: our router vs Ray Serve's built-in multiplexing vs pow2.

One command, one run, the same seeded traces for every router, on real Ray Serve with simulated
replicas (serve_app/routing/simulated.py). Default size (about 8 minutes on 2 cores): 3 replicas
x 2 adapter slots, each serving at most 2 requests at once and accepting 4 (the "hot-2" trace: 2),
0.2 s adapter load, 0.02 s service, 800 requests per trace (as issue 5 measured) from 8
closed-loop clients; adapters = 4 x total slots.
"""

import argparse

from benchmarks.routing.run import Setup, main

if __name__ == "__main__":
    d = Setup()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=d.replicas)
    p.add_argument("--slots", type=int, default=d.slots)
    p.add_argument("--k", type=int, default=d.k, help="requests served at once per replica")
    p.add_argument("--max-ongoing", type=int, default=d.max_ongoing)
    p.add_argument("--load-s", type=float, default=d.load_s)
    p.add_argument("--service-s", type=float, default=d.service_s)
    p.add_argument("--requests", type=int, default=d.requests)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--knobs", default=d.knobs, help="JSON of policy.Knobs fields (ours)")
    p.add_argument("--max-backoff-s", type=float, default=d.max_backoff_s)
    p.add_argument("--traces", default="", help="subset: zipf,rotate,hot,hot-2,burst")
    p.add_argument("--routers", default="", help="subset: ours,ours-lru,builtin,pow2")
    p.add_argument("--out", default="routing-results.json")
    a = p.parse_args()
    setup = Setup(
        a.replicas,
        a.slots,
        a.k,
        a.max_ongoing,
        a.load_s,
        a.service_s,
        a.requests,
        a.concurrency,
        a.knobs,
        a.max_backoff_s,
    )
    main(
        setup,
        a.out,
        set(filter(None, a.traces.split(","))) or None,
        set(filter(None, a.routers.split(","))) or None,
    )
