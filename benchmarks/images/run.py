"""The switching benchmark's machinery: build assets, start the app with two image bases (a
resident working set, and a working set of one for the naive path), drive traces over HTTP."""

import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.ports import free_port

RESIDENT, NAIVE = "tiny-sd", "tiny-sd-naive"
PROMPTS = ["a red fox in snow", "sushi rolls shaped like kawaii cat faces", "a lighthouse"]


@dataclass(frozen=True)
class Setup:
    requests: int = 96
    concurrency: tuple[int, ...] = (1, 4)
    adapters: int = 4
    size: int = 64
    steps: int = 4
    lora_rank: int = 0


def main(setup: Setup, out: str) -> None:
    import ray
    from ray import serve

    from serve_app import build_app
    from serve_app.demo.image_assets import build_image_assets

    root = Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")).resolve()
    assets = build_image_assets(root)
    adapters = _adapters(assets, setup, root)
    names = list(adapters)[: setup.adapters]
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(_config(assets, adapters, root)), name="bench", route_prefix="/")
        results = asyncio.run(_scenarios(f"http://127.0.0.1:{port}", names, setup))
    finally:
        serve.shutdown()
        ray.shutdown()
    _report(results, setup, names)
    Path(out).write_text(json.dumps({"setup": asdict(setup), "results": results}, indent=2))
    print(f"wrote {out}")


def _adapters(assets: dict, setup: Setup, root: Path) -> dict[str, dict]:
    if not setup.lora_rank:
        return {n: {"name": n, **a} for n, a in assets["adapters"].items()}
    from diffusers import DiffusionPipeline
    from peft import LoraConfig

    from serve_app.demo.image_assets import save_diffusers_lora

    pipe = DiffusionPipeline.from_pretrained(assets["base"])
    out = {}
    for i in range(setup.adapters):
        d = root / "image" / "bench" / f"r{setup.lora_rank}-{i}"
        if not (d / "lora.safetensors").exists():
            targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2"]
            cfg = LoraConfig(
                r=setup.lora_rank, lora_alpha=1, target_modules=targets, init_lora_weights=False
            )
            save_diffusers_lora(pipe, d, "lora.safetensors", cfg, None, 200 + i)
        out[f"big{i}"] = {"name": f"big{i}", "source": str(d), "weight_name": "lora.safetensors"}
    return out


def _config(assets: dict, adapters: dict[str, dict], root: Path) -> dict:
    def base(name: str, slots: int) -> dict:
        return {
            "name": name,
            "model": assets["base"],
            "max_adapters": slots,
            "max_size": 256,
            "default_size": 64,
            "max_steps": 50,
            "adapters": list(adapters.values()),
            "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}},
        }

    return {
        "sources": {"allowed_roots": [str(root)], "cache_dir": tempfile.mkdtemp()},
        "image": [base(RESIDENT, 8), base(NAIVE, 1)],
    }


def _trace(base: str, names: list[str], n: int, rotate: bool) -> list[dict]:
    return [
        {
            "model": f"{base}:{names[i % len(names)] if rotate else names[0]}",
            "prompt": PROMPTS[i % len(PROMPTS)],
            "seed": i,
        }
        for i in range(n)
    ]


async def _scenarios(url: str, names: list[str], setup: Setup) -> list[dict]:
    common = {"size": f"{setup.size}x{setup.size}", "num_inference_steps": setup.steps}
    results = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await _wait_ready(client)
        for name in names:  # warm: every adapter resident, pipelines exercised
            await _post(client, {"model": f"{RESIDENT}:{name}", "prompt": "warm", **common})
        await _post(client, {"model": f"{NAIVE}:{names[0]}", "prompt": "warm", **common})
        for conc in setup.concurrency:
            for scenario, base, rotate in [
                ("single", RESIDENT, False),
                ("alternating", RESIDENT, True),
                ("naive", NAIVE, True),
            ]:
                trace = [{**r, **common} for r in _trace(base, names, setup.requests, rotate)]
                before = await _snapshot(base)
                stats = await _drive(client, trace, conc)
                after = await _snapshot(base)
                stats.update(
                    scenario=scenario,
                    concurrency=conc,
                    loads=after["loads"] - before["loads"],
                    pipeline_calls=after["engine"]["calls"] - before["engine"]["calls"],
                )
                print(f"  {scenario:12s} c={conc}: {stats['throughput']:.2f} img/s")
                results.append(stats)
    return results


async def _drive(client: httpx.AsyncClient, trace: list[dict], concurrency: int) -> dict:
    queue = list(reversed(trace))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            body = queue.pop()
            t = time.perf_counter()
            await _post(client, body)
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(trace),
        "wall_s": round(wall, 3),
        "throughput": len(trace) / wall,
        "p50_s": round(statistics.median(latencies), 4),
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 4),
    }


async def _post(client: httpx.AsyncClient, body: dict) -> None:
    resp = await client.post("/v1/images/generations", json=body)
    resp.raise_for_status()


async def _snapshot(base: str) -> dict:
    from ray import serve

    handle = serve.get_deployment_handle(f"image:{base}", app_name="bench")
    return await handle.adapter_snapshot.remote()


async def _wait_ready(client: httpx.AsyncClient, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if (await client.get("/v1/models")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(1)
    raise TimeoutError("app did not become ready")


def _report(results: list[dict], setup: Setup, names: list[str]) -> None:
    print(
        f"\n{setup.requests} requests per scenario, {setup.size}x{setup.size}, {setup.steps} "
        f"steps, rotating over {names}"
    )
    print(f"{'scenario':12s} {'conc':>4s} {'img/s':>7s} {'p50 s':>7s} {'p99 s':>7s} "
          f"{'loads':>5s} {'calls':>5s}")  # fmt: skip
    for r in results:
        print(
            f"{r['scenario']:12s} {r['concurrency']:4d} {r['throughput']:7.2f} {r['p50_s']:7.3f} "
            f"{r['p99_s']:7.3f} {r['loads']:5d} {r['pipeline_calls']:5d}"
        )
    for conc in setup.concurrency:
        by = {r["scenario"]: r["throughput"] for r in results if r["concurrency"] == conc}
        print(
            f"concurrency {conc}: alternating/single = {by['alternating'] / by['single']:.3f} "
            f"(target >= 0.9); alternating/naive speedup = {by['alternating'] / by['naive']:.2f}x"
        )
