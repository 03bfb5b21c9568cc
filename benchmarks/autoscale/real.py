"""``python -m benchmarks.autoscale.real``: adapter-aware autoscaling vs Serve's default policy on
the REAL app (Ray Serve autoscaling, the Transformers+PEFT engine on the tiny demo Llama, real
adapters), one after the other on the same seeded trace: Poisson arrivals whose rate rises then
falls, Zipf over more adapters than one replica holds. Warming (deployments/warming.py) is on in
both runs (the app's default); only ``autoscaling_policy`` differs.

Prints, per policy: running replicas over time (Serve's status, every ``--sample-s``), adapter
loads per 1,000 requests (the replicas' own "-> ready" log lines, warming included), p50/p99
client latency, dropped requests (no 200 within ``--timeout-s``) and replica-seconds (running
replicas integrated from the first request to ``--tail-s`` after the last answer). Writes JSON
to ``--out``. Run it under the shared lock: it starts Ray.

``--model smollm2 --rank 64`` serves SmolLM2-135M with copies of a rank-64 all-linear adapter
(78 MB), so that a load costs about what a request does, as on GPUs. Each replica runs torch on
one thread (Ray's ``OMP_NUM_THREADS`` for a fractional CPU): on this 2-core machine
``--max-replicas 2`` gives every replica a core of its own, so scaling out adds compute as a new
node would, not only adapter slots.
"""

import argparse
import asyncio
import json
import os
import random
import re
import time
from pathlib import Path

import httpx

from benchmarks.adapter_copies import make_adapter_copies, make_large_template
from benchmarks.ports import free_port
from benchmarks.text_model import MODELS, out_path, text_assets

RATES = "1,2,3,4,6,6,4,3,2,1"  # requests/s, one per phase
APP = "loraserve"


def trace(rates: list[float], phase_s: float, adapters: list[str], zipf: float, seed: int):
    """[(send at s, adapter)]: Poisson arrivals at each phase's rate, Zipf adapter choice."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** zipf for i in range(len(adapters))]
    out, t = [], 0.0
    for k, rate in enumerate(rates):
        end = (k + 1) * phase_s
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            out.append((t, rng.choices(adapters, weights)[0]))
    return out


async def replay(url: str, base: str, events, timeout_s: float, max_tokens: int, sample, tail_s):
    lat: list[float] = []
    dropped = 0

    async def one(client: httpx.AsyncClient, at: float, adapter: str, t0: float) -> None:
        nonlocal dropped
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        body = {"model": f"{base}:{adapter}", "prompt": "Hello", "max_tokens": max_tokens}
        start = time.perf_counter()
        try:
            r = await client.post(f"{url}/v1/completions", json=body)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            lat.append(time.perf_counter() - start)
        else:
            dropped += 1

    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()
        sampler = asyncio.create_task(sample(t0))
        await asyncio.gather(*(one(client, at, a, t0) for at, a in events))
        await asyncio.sleep(tail_s)  # idle: the replicas scale back down
        sampler.cancel()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"p50_s": q(0.5), "p99_s": q(0.99), "dropped": dropped, "answered": len(lat)}


def run_one(policy: str, args, adapters: dict, demo: dict, base: str, events) -> dict:
    import ray
    from ray import serve

    from serve_app import build_app
    from serve_app.routing.serve_internals import serve_log_dir

    port = free_port()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    log_dir = Path(serve_log_dir())
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deployment = {
        "max_ongoing_requests": args.max_ongoing,
        "autoscaling_policy": policy,
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing,
            "upscale_delay_s": args.upscale_delay_s,
            "downscale_delay_s": args.downscale_delay_s,
            "look_back_period_s": args.look_back_s,
            "metrics_interval_s": 1,
        },
        "ray_actor_options": {"num_cpus": 0.1},
    }
    cfg = {
        "sources": {"allowed_roots": [str(Path(args.adapter_dir).resolve())]},
        "llm": [
            {
                "name": base,
                "model": demo["base"],
                "engine": "peft",
                "dtype": "float32",
                "max_model_len": 256,
                "max_loras": args.slots,
                "max_lora_rank": max(16, args.rank),
                "adapters": [{"name": n, "source": p} for n, p in adapters.items()],
                "deployment": deployment,
            }
        ],
    }
    serve.run(build_app(cfg), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    httpx.post(
        f"{url}/v1/completions", json={"model": base, "prompt": "hi", "max_tokens": 2}, timeout=300
    ).raise_for_status()
    samples: list[tuple[float, int]] = []

    def running() -> int:
        dep = serve.status().applications[APP].deployments[f"llm:{base}"]
        return dep.replica_states.get("RUNNING", 0)

    async def sample(t0: float) -> None:
        while True:
            samples.append((time.perf_counter() - t0, await asyncio.to_thread(running)))
            await asyncio.sleep(args.sample_s)

    res = asyncio.run(
        replay(url, base, events, args.timeout_s, args.max_tokens, sample, args.tail_s)
    )
    time.sleep(2)  # let the replicas flush their logs
    loads = sum(
        len(re.findall(r"adapter \S+: loading -> ready", f.read_text(errors="replace")))
        for f in log_dir.glob("replica_loraserve_llm*.log")
    )
    serve.shutdown()
    ray.shutdown()
    replica_s = sum(
        n * (t1 - t0) for (t0, n), (t1, _) in zip(samples, samples[1:], strict=False)
    )  # fmt: skip
    return {
        **res,
        "policy": policy,
        "requests": len(events),
        "loads": loads,
        "loads_per_1000": 1000 * loads / len(events),
        "replica_s": replica_s,
        "peak": max(n for _, n in samples),
        "timeline": [n for _, n in samples],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default=RATES, help="requests/s per phase, comma-separated")
    p.add_argument("--phase-s", type=float, default=15.0)
    p.add_argument("--adapters", type=int, default=16)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--slots", type=int, default=2, help="adapters one replica holds")
    p.add_argument("--max-ongoing", type=int, default=4)
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--target-ongoing", type=float, default=2.0)
    p.add_argument("--upscale-delay-s", type=float, default=3.0)
    p.add_argument("--downscale-delay-s", type=float, default=15.0)
    p.add_argument("--look-back-s", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--timeout-s", type=float, default=30.0, help="client gives up (dropped)")
    p.add_argument("--sample-s", type=float, default=2.0)
    p.add_argument("--tail-s", type=float, default=30.0, help="idle after the trace, sampled")
    p.add_argument("--cpus", type=int, default=4, help="Ray's CPU count (replicas ask 0.1)")
    p.add_argument("--policies", default="default,adapter_aware")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter-dir", default="results/autoscale-adapters")
    p.add_argument("--model", default="tiny", choices=MODELS, help="text base (see text_model)")
    p.add_argument("--rank", type=int, default=0, help="rank-R all-linear adapters (0: demo's)")
    p.add_argument("--out", default="results/autoscale_real.json")
    a = p.parse_args()
    a.out = out_path(a.out, a.model)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base, demo = text_assets(a.model)
    root = Path(a.adapter_dir).resolve()
    template = demo["adapters"]["pirate"]
    if a.rank:
        template = make_large_template(demo["base"], base, root, a.rank)
    adapters = make_adapter_copies(template, a.adapters, root / f"{a.model}-r{a.rank}")
    rates = [float(x) for x in a.rates.split(",")]
    events = trace(rates, a.phase_s, list(adapters), a.zipf, a.seed)
    print(
        f"trace: {rates} req/s, {a.phase_s:.0f} s each, {len(events)} requests; {a.adapters} "
        f"adapters Zipf({a.zipf}); {a.slots} slots per replica; target_ongoing_requests "
        f"{a.target_ongoing}, max_ongoing {a.max_ongoing}, 1-{a.max_replicas} replicas, delays "
        f"up {a.upscale_delay_s}s / down {a.downscale_delay_s}s",
        flush=True,
    )
    rows = []
    for policy in a.policies.split(","):
        r = run_one(policy, a, adapters, demo, base, events)
        rows.append(r)
        print(
            f"{policy:14} requests {r['requests']}  dropped {r['dropped']}  loads/1k "
            f"{r['loads_per_1000']:.1f}  p50 {r['p50_s']:.2f}s  p99 {r['p99_s']:.2f}s  "
            f"replica-s {r['replica_s']:.0f}  peak {r['peak']}  replicas every {a.sample_s:.0f}s: "
            + " ".join(map(str, r["timeline"])),
            flush=True,
        )
    if len(rows) == 2:
        x, y = rows[1], rows[0]
        print(
            f"ratios {x['policy']}/{y['policy']}: loads {x['loads'] / max(1, y['loads']):.2f}x  "
            f"p99 {x['p99_s'] / y['p99_s']:.2f}x  replica-s {x['replica_s'] / y['replica_s']:.2f}x"
        )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
