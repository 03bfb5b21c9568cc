"""Adapter-aware routing vs Ray Serve's built-in multiplex routing on the REAL app: vLLM CPU
replicas of the tiny demo model, real adapters, the same seeded Zipf trace, one after the other.

    .venv/bin/python -m benchmarks.routing_real [--replicas 3] [--slots 2] [--adapters 8]
    .venv/bin/python -m benchmarks.routing_real --model smollm2 --rank 64 --s3   # production costs

``--rank R`` serves copies of a rank-R adapter over every linear layer instead of the small demo
adapter, and ``--s3`` fetches them from a local S3 server (moto) through the app's S3 source, so
that a cold load costs a download plus a large ``add_lora``, as on a real deployment. The node's
disk cache keeps every download (a load after the first reads the local copy) unless
``--disk-cache-mb`` gives it a budget smaller than the catalog, as a node serving thousands of
adapters has: then a load that misses it downloads again. ``--nodes`` puts each replica on a Ray
node of its own (``ray.cluster_utils.Cluster`` on this machine), each node with its own disk
cache, as replicas on separate machines have: where an adapter's files already are decides
whether its load downloads. Runs are named ``router[-eviction]``
(``--runs``): ours runs with the app's default eviction (lfu) unless named
``adapter_aware-lru``; the built-in router runs over lru replicas unless named ``builtin-lfu``,
as Ray's own multiplexing evicts; ``+knob=value`` sets one of ours' policy knobs for that run
(``adapter_aware+balance=0``), so that a tuned row runs beside the defaults.
``--warmup N`` sends the first N requests of the trace uncounted (loads, latency, decisions): from
an empty fleet the first seconds are every adapter's first fetch, which both routers pay, and on
a few hundred requests they set the p99.
``--prime`` first sends one uncounted request per adapter, so that no counted request is an
adapter's first download (with 32 adapters, a warm-up of 120 requests leaves about ten of them
to the counted window, the same ones for both routers, and they set its p99). Clients are
closed-loop (``--concurrency``: each sends its next request when one returns, so on a saturated
machine latency is concurrency / throughput) unless ``--rate R`` sends the trace as Poisson
arrivals at R per second (open loop, as independent users arrive: a router that spends less of
the machine on loads leaves more headroom, and the queue it avoids shows in the latency).

Counts adapter loads from the replicas' own logs (the pool logs every "-> ready"), requests per
replica from Serve's access log lines, and latency at the client, split into the requests that
loaded their adapter and the others (each request carries its own ``x-request-id``, which Serve
logs on every line it causes), and the CPU each process role spent per counted request. Prints
ours/built-in ratios; ``--rounds N`` runs the routers N times, interleaved, and prints the median
ratio with each round's (on 2 shared cores one run's p99 and throughput move by 10-20% from run
to run).
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from benchmarks.adapter_copies import make_adapter_copies, make_large_template
from benchmarks.cpu import cpu_per_request, cpu_tree
from benchmarks.ports import free_port
from benchmarks.text_model import MODELS, out_path, text_assets

BASE = "tiny-llama"


def zipf_trace(n: int, names: list[str], s: float, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** s for i in range(len(names))]
    return rng.choices(names, weights=weights, k=n)


async def replay(
    url: str, trace: list[str], concurrency: int, max_tokens: int, rate: float = 0.0
) -> dict:
    """Send ``trace`` at ``concurrency`` (closed loop) or, with ``rate``, as Poisson arrivals at
    ``rate`` per second (open loop: a request's latency counts from its arrival, so time it
    waits behind a slow server counts); throughput, p50/p99 latency and, per request id (the
    ``x-request-id`` Serve logs on every line the request causes), its latency."""
    sem = asyncio.Semaphore(concurrency if not rate else len(trace))
    lat: list[float] = []
    by_id: dict[str, float] = {}
    tag = uuid.uuid4().hex[:8]
    gaps = random.Random(len(trace)).expovariate
    arrivals = [0.0]
    for _ in trace[1:]:
        arrivals.append(arrivals[-1] + (gaps(rate) if rate else 0.0))

    async def one(client: httpx.AsyncClient, i: int, adapter: str) -> None:
        body = {
            "model": f"{BASE}:{adapter}",
            "prompt": "Hello",
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        rid = f"{tag}-{i}"
        if rate:
            await asyncio.sleep(max(0.0, start + arrivals[i] - time.perf_counter()))
        async with sem:
            t = start + arrivals[i] if rate else time.perf_counter()
            resp = await client.post(
                f"{url}/v1/completions", json=body, headers={"x-request-id": rid}
            )
            lat.append(time.perf_counter() - t)
        by_id[rid] = lat[-1]
        resp.raise_for_status()

    limits = httpx.Limits(max_connections=None if rate else concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, i, a) for i, a in enumerate(trace)))
        wall = time.perf_counter() - start
    return {"req_per_s": len(trace) / wall, **quantiles(lat), "latency_by_id": by_id}


def quantiles(lat: list[float]) -> dict:
    lat = sorted(lat)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0  # noqa: E731
    return {"p50_s": q(0.5), "p99_s": q(0.99)}


def cold_ids(log_dir: Path) -> set[str]:
    """Ids of the requests that loaded their adapter (the pool logs "-> ready" under the id of
    the request that started the load), from the LLM replicas' logs."""
    ids: set[str] = set()
    for f in log_dir.glob("replica_loraserve_llm_*.log"):
        ids.update(re.findall(r" (\S+) -- adapter \S+: loading -> ready", f.read_text()))
    return ids


def replica_counts(
    log_dir: Path,
) -> tuple[int, list[int], dict[str, int], dict[str, int], dict[str, int]]:
    """(adapter loads, requests per replica, loads per adapter, routing decisions per kind,
    S3 fetches by outcome) from the Serve log files: the LLM replicas' pools and sources, and
    the ingress's router (ours logs every decision, ``cold+disk`` for a load placed on a node
    that had its files; Serve's built-in router logs none)."""
    loads, per_replica, per_adapter, kinds = 0, [], {}, {}
    fetches = {"downloaded": 0, "from disk": 0}
    for f in sorted(log_dir.glob("replica_loraserve_llm_*.log")):
        text = f.read_text(errors="replace")
        for name in re.findall(r"adapter (\S+): loading -> ready", text):
            loads += 1
            per_adapter[name] = per_adapter.get(name, 0) + 1
        per_replica.append(len(re.findall(r"CALL (?:complete|generate) OK", text)))
        fetches["downloaded"] += len(re.findall(r" -- cached s3\|", text))
        fetches["from disk"] += len(re.findall(r": s3://\S+ from the disk cache", text))
    for f in log_dir.glob("*.log"):
        pattern = r"adapter router: .* -> replica \S+ \((\w+), waited [\d.]+s(, its files)?"
        for kind, local in re.findall(pattern, f.read_text()):
            kind += "+disk" if local else ""  # a load placed where its files were
            kinds[kind] = kinds.get(kind, 0) + 1
    return loads, per_replica, dict(sorted(per_adapter.items())), kinds, fetches


def _minus(after: tuple, before: tuple) -> tuple:
    """``replica_counts`` since ``before`` (the same replicas, in the same order)."""

    def since(now: dict, then: dict) -> dict:
        return {k: v - then.get(k, 0) for k, v in now.items() if v > then.get(k, 0)}

    old = before[1] or [0] * len(after[1])
    return (
        after[0] - before[0],
        [n - o for n, o in zip(after[1], old, strict=True)],
        since(after[2], before[2]),
        since(after[3], before[3]),
        {k: v - before[4].get(k, 0) for k, v in after[4].items()},
    )


def run_one(
    router: str,
    args,
    adapters: dict,
    demo: dict,
    root: Path,
    sources: dict,
    eviction: str,
    knobs: dict,
) -> dict:
    import ray
    from ray import serve

    from serve_app import build_app
    from serve_app.routing.serve_internals import serve_log_dir

    port = free_port()
    cluster = None
    if args.nodes:  # one Ray node per replica on this machine, each with a disk cache of its own
        from ray.cluster_utils import Cluster

        node = {"include_dashboard": False, "object_store_memory": 200 * 2**20}
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, **node})
        for i in range(args.replicas):
            cache = os.path.join(sources["cache_dir"], f"node{i}")
            cluster.add_node(
                num_cpus=0,
                resources={"replica": 1},
                env_vars={"LORASERVE_ADAPTER_CACHE_DIR": cache},
                **node,
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
    else:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    log_dir = Path(serve_log_dir())
    # NOTE: one HTTP proxy: on one machine every node has the same address and port.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    cfg = {
        "sources": sources,
        "llm": [
            {
                "name": BASE,
                "model": demo["base"],
                "dtype": "float32",
                "max_model_len": 256,
                "max_loras": args.slots,
                "max_cpu_loras": args.slots,
                "max_lora_rank": max(16, args.rank),
                **({"eviction": eviction} if eviction else {}),
                "engine_kwargs": {"enforce_eager": True},
                "adapters": [{"name": n, "source": p} for n, p in adapters.items()],
                "deployment": {
                    "num_replicas": args.replicas,
                    "router": router,
                    **({"router_knobs": knobs} if router != "builtin" else {}),
                    **({"max_ongoing_requests": args.capacity} if args.capacity else {}),
                    "ray_actor_options": (
                        {"num_cpus": 0, "resources": {"replica": 1}}
                        if args.nodes
                        else {"num_cpus": 0.5}
                    ),
                },
            }
        ],
    }
    serve.run(build_app(cfg), name="loraserve", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    httpx.post(
        f"{url}/v1/completions", json={"model": BASE, "prompt": "hi", "max_tokens": 2}, timeout=300
    ).raise_for_status()
    trace = zipf_trace(args.warmup + args.requests, list(adapters), args.zipf)
    before = (0, [], {}, {}, {})
    if args.prime:  # every adapter once, uncounted: each is in the node's disk cache after it
        asyncio.run(replay(url, list(adapters), args.concurrency, args.max_tokens))
    if args.warmup:  # uncounted: the fleet fills up
        asyncio.run(replay(url, trace[: args.warmup], args.concurrency, args.max_tokens, args.rate))
    if args.prime or args.warmup:
        time.sleep(2)  # let the replicas flush their logs
        before = replica_counts(log_dir)
    trace = trace[args.warmup :]
    cpu = cpu_tree(os.getpid())  # this process (clients, S3 server), Ray's and vLLM's under it
    res = asyncio.run(replay(url, trace, args.concurrency, args.max_tokens, args.rate))
    cpu = cpu_per_request(cpu, cpu_tree(os.getpid()), len(trace))
    time.sleep(2)
    loads, per_replica, per_adapter, kinds, fetches = _minus(replica_counts(log_dir), before)
    by_id, cold = res.pop("latency_by_id"), cold_ids(log_dir)
    split = {
        "cold": quantiles([t for i, t in by_id.items() if i in cold]),
        "hit": quantiles([t for i, t in by_id.items() if i not in cold]),
        "cold_share": len(cold & by_id.keys()) / len(by_id),
    }
    serve.shutdown()
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    mean = sum(per_replica) / max(1, len(per_replica))
    return {
        **res,
        "loads": loads,
        "loads_per_1000": 1000 * loads / len(trace),
        "requests_per_replica": per_replica,
        "max_over_mean": max(per_replica) / mean if mean else 0.0,
        "loads_per_adapter": per_adapter,
        "decisions": kinds,
        "fetches": fetches,
        "latency_by_load": split,
        "cpu_ms_per_request": cpu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--slots", type=int, default=2, help="adapters resident per replica")
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--requests", type=int, default=240)
    p.add_argument(
        "--warmup", type=int, default=0, help="requests sent first and not counted (same trace)"
    )
    p.add_argument(
        "--prime",
        action="store_true",
        help="first one uncounted request per adapter, so that each was fetched once (a node's "
        "steady state: its disk cache holds them)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the routers this many times, interleaved; prints the median ratio",
    )
    p.add_argument("--concurrency", type=int, default=6, help="clients (closed loop)")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop instead: Poisson arrivals at this many requests per second",
    )
    p.add_argument(
        "--capacity", type=int, default=4, help="max_ongoing_requests per replica (0: the app's)"
    )
    p.add_argument(
        "--nodes",
        action="store_true",
        help="with --s3: each replica on a Ray node of its own (a cluster on this machine), each "
        "node with its own disk cache, as replicas on separate machines have",
    )
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--out", default="results/routing_real.json")
    p.add_argument("--model", default="tiny", choices=MODELS, help="text base (see text_model)")
    p.add_argument("--rank", type=int, default=0, help="rank-R all-linear adapters (0: demo's)")
    p.add_argument("--s3", action="store_true", help="fetch the adapters from a local S3 server")
    p.add_argument(
        "--disk-cache-mb",
        type=int,
        default=0,
        help="with --s3: the node's disk cache budget (0: the app's default, which holds every "
        "adapter here); below the catalog's size a load that misses it fetches from S3 again",
    )
    p.add_argument("--knobs", default="{}", help="JSON dict of policy.Knobs fields (ours)")
    p.add_argument(
        "--runs",
        default="adapter_aware,builtin",
        help="comma-separated router[-lru|-lfu][+knob=value...] (ours: the app's eviction; "
        "builtin: lru); e.g. adapter_aware+balance=0 runs ours with that knob beside the others",
    )
    args = p.parse_args()
    if args.nodes and not args.s3:
        p.error("--nodes needs --s3 (local adapters are read in place: no disk cache)")
    args.out = out_path(args.out, args.model)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    global BASE
    BASE, demo = text_assets(args.model)
    root = Path("results/routing-adapters").resolve()
    template = demo["adapters"]["pirate"]
    if args.rank:
        template = make_large_template(demo["base"], BASE, root, args.rank)
    adapters = make_adapter_copies(template, args.adapters, root / f"r{args.rank}")
    with contextlib.ExitStack() as stack:
        sources: dict = {"allowed_roots": [str(root)]}
        if args.s3:
            from benchmarks.s3 import s3_adapters

            uri = stack.enter_context(s3_adapters(adapters))
            adapters = {n: f"{uri}/{n}" for n in adapters}
            sources["s3_endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        results: dict[str, list[dict]] = {}
        runs = args.runs.split(",")
        for n in range(args.rounds):  # interleaved, so a slow minute of the machine hits both
            for run in runs:
                spec, *tweaks = run.split("+")
                router, _, eviction = spec.partition("-")
                knobs = json.loads(args.knobs) | {
                    k: json.loads(v) for k, v in (x.split("=", 1) for x in tweaks)
                }
                if router == "builtin":
                    eviction = eviction or "lru"  # as Ray Serve's multiplexing evicts
                # Each run starts with an empty disk cache, as a fresh node would (removed after
                # it: 32 adapters x 78 MB a run).
                with tempfile.TemporaryDirectory(prefix=f"routing-{run}-") as cache:
                    if args.s3:
                        sources["cache_dir"] = cache
                        if args.disk_cache_mb:
                            sources["cache_max_bytes"] = args.disk_cache_mb * 2**20
                    r = run_one(router, args, adapters, demo, root, sources, eviction, knobs)
                results.setdefault(run, []).append(r)
                _print_run(f"{run} #{n + 1}" if args.rounds > 1 else run, r)
    b = results.get("builtin")
    for run in (r for r in runs if r != "builtin" and b):
        pairs = list(zip(results[run], b, strict=True))
        ratios = {
            "loads": [a["loads"] / max(1, o["loads"]) for a, o in pairs],
            "p99": [a["p99_s"] / o["p99_s"] for a, o in pairs],
            "throughput": [a["req_per_s"] / o["req_per_s"] for a, o in pairs],
        }
        print(
            f"ratios {run}/built-in"
            + (f" (median of {args.rounds} rounds)" if args.rounds > 1 else "")
            + ":  "
            + "  ".join(
                f"{k} {statistics.median(v):.2f}x"
                + (f" [{', '.join(f'{x:.2f}' for x in v)}]" if args.rounds > 1 else "")
                for k, v in ratios.items()
            )
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = {run: rs[0] if args.rounds == 1 else rs for run, rs in results.items()}
    Path(args.out).write_text(json.dumps({"args": vars(args), **out}, indent=2))


def _print_run(name: str, r: dict) -> None:
    print(
        f"{name:18s} loads/1000 {r['loads_per_1000']:6.1f}"
        f"  p50 {r['p50_s'] * 1000:6.0f} ms  p99 {r['p99_s'] * 1000:6.0f} ms"
        f"  {r['req_per_s']:5.2f} req/s  "
        f"per replica {r['requests_per_replica']} (max/mean {r['max_over_mean']:.2f})"
        f"  loads per adapter {r['loads_per_adapter']}  decisions {r['decisions']}"
        f"  S3 fetches {r['fetches']}",
        flush=True,
    )
    s = r["latency_by_load"]
    print(
        f"{'':18s} requests that loaded their adapter: {s['cold_share']:.0%}, p50 "
        f"{s['cold']['p50_s'] * 1000:.0f} ms, p99 {s['cold']['p99_s'] * 1000:.0f} ms;"
        f" the others p50 {s['hit']['p50_s'] * 1000:.0f} ms,"
        f" p99 {s['hit']['p99_s'] * 1000:.0f} ms",
        flush=True,
    )
    cpu = r["cpu_ms_per_request"]
    print(
        f"{'':18s} CPU ms per request {sum(cpu.values()):.0f}: "
        + ", ".join(f"{k.removeprefix('ray::')} {v:.0f}" for k, v in list(cpu.items())[:6]),
        flush=True,
    )


if __name__ == "__main__":
    main()
