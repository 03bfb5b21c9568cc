"""The soak's machinery: start the demo app in a fresh state directory, send the mix, report."""

import asyncio
import json
import os
import random
import socket
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

TEXT, IMAGE = "tiny-llama", "tiny-sd"
TEXT_MODELS = [TEXT, f"{TEXT}:sql", f"{TEXT}:poet", f"{TEXT}:chef", f"{TEXT}:pirate"]
IMAGE_MODELS = [IMAGE, f"{IMAGE}:pixel", f"{IMAGE}:sketch", f"{IMAGE}:style3d"]
# (share of requests, kind)
MIX = [(0.35, "completion"), (0.15, "chat"), (0.25, "completion-stream"), (0.1, "chat-stream"),
       (0.15, "image")]  # fmt: skip


@dataclass(frozen=True)
class Setup:
    minutes: float = 10.0
    rate: float = 3.0
    max_inflight: int = 32


@dataclass
class Minute:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


def main(setup: Setup, out: str) -> None:
    import ray
    from ray import serve

    from serve_app import build_app
    from serve_app.config import AppConfig
    from serve_app.demo.__main__ import build_all

    build_all(Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")))
    cfg = AppConfig.from_yaml("configs/demo.yaml").model_dump(mode="json")
    cfg["state_dir"] = tempfile.mkdtemp(prefix="soak-state-")
    cfg["sources"]["cache_dir"] = tempfile.mkdtemp(prefix="soak-cache-")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(cfg), name="loraserve", route_prefix="/")
        result = asyncio.run(_soak(f"http://127.0.0.1:{port}", setup))
    finally:
        serve.shutdown()
        ray.shutdown()
    Path(out).write_text(json.dumps({"setup": asdict(setup), **result}, indent=2))
    print(f"wrote {out}")


def _body(kind: str, i: int) -> tuple[str, dict]:
    rng = random.Random(i)
    if kind == "image":
        body = {"model": rng.choice(IMAGE_MODELS), "prompt": "a lighthouse", "seed": i,
                "size": "32x32", "num_inference_steps": 2}  # fmt: skip
        return "/v1/images/generations", body
    model = rng.choice(TEXT_MODELS)
    common = {"model": model, "max_tokens": rng.choice([8, 16, 32]), "temperature": 0.7, "seed": i}
    common["stream"] = kind.endswith("-stream")
    if kind.startswith("chat"):
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": "Hi"}]}
    return "/v1/completions", {**common, "prompt": "Once upon a time"}


async def _one(client: httpx.AsyncClient, path: str, body: dict) -> str | None:
    """None if answered in full; else what went wrong."""
    if not body.get("stream"):
        resp = await client.post(path, json=body)
        return None if resp.status_code == 200 else f"{resp.status_code} {resp.text[:200]}"
    async with client.stream("POST", path, json=body) as resp:
        if resp.status_code != 200:
            return f"{resp.status_code} {(await resp.aread())[:200]!r}"
        done = False
        async for line in resp.aiter_lines():
            if '"error"' in line:
                return f"in-stream error: {line[:200]}"
            done = done or line == "data: [DONE]"
    return None if done else "stream ended without [DONE]"


async def _soak(url: str, setup: Setup) -> dict:
    kinds = [k for _, k in MIX]
    weights = [w for w, _ in MIX]
    minutes: list[Minute] = []
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(setup.max_inflight)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await _wait_ready(client)
        for kind in kinds:  # warm every path once (vLLM, images, adapters)
            await _one(client, *_body(kind, 0))
        rss_start = _rss()
        mix = {k: w for w, k in MIX}
        print(f"soak: {setup.minutes:g} min at {setup.rate:g} req/s; mix {mix}")
        started = time.monotonic()
        tasks: set[asyncio.Task] = set()

        async def send(i: int, minute: Minute) -> None:
            kind = random.Random(i).choices(kinds, weights)[0]
            async with gate:
                t = time.monotonic()
                try:
                    problem = await _one(client, *_body(kind, i))
                except httpx.HTTPError as e:
                    problem = f"client error: {type(e).__name__}: {e}"
            if problem is None:
                minute.answered += 1
                minute.latencies.append(time.monotonic() - t)
            else:
                minute.failed += 1
                failures[f"{kind}: {problem}"] += 1

        i = 0
        while (elapsed := time.monotonic() - started) < setup.minutes * 60:
            m = int(elapsed // 60)
            while len(minutes) <= m:
                if minutes:
                    _print_minute(len(minutes), minutes[-1])
                minutes.append(Minute())
            minutes[m].sent += 1
            task = asyncio.create_task(send(i, minutes[m]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, started + i / setup.rate - time.monotonic()))
        await asyncio.gather(*tasks)  # NOTE: bounded: every request has a client timeout
        _print_minute(len(minutes), minutes[-1])
        rss_end = _rss()
    return _report(minutes, failures, rss_start, rss_end)


def _print_minute(n: int, m: Minute) -> None:
    p50, p99 = _pct(m.latencies, 0.5), _pct(m.latencies, 0.99)
    print(f"  minute {n}: sent {m.sent} answered {m.answered} failed {m.failed} "
          f"p50 {p50:.3f}s p99 {p99:.3f}s", flush=True)  # fmt: skip


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _report(minutes: list[Minute], failures: Counter, start: dict, end: dict) -> dict:
    rows = [
        {"minute": i + 1, "sent": m.sent, "answered": m.answered, "failed": m.failed,
         "p50_s": round(_pct(m.latencies, 0.5), 4), "p99_s": round(_pct(m.latencies, 0.99), 4)}
        for i, m in enumerate(minutes)
    ]  # fmt: skip
    print(
        f"\n{'minute':>6s} {'sent':>6s} {'answered':>8s} {'failed':>6s} {'p50 s':>7s} {'p99 s':>7s}"
    )
    for r in rows:
        print(f"{r['minute']:6d} {r['sent']:6d} {r['answered']:8d} {r['failed']:6d} "
              f"{r['p50_s']:7.3f} {r['p99_s']:7.3f}")  # fmt: skip
    total = {k: sum(r[k] for r in rows) for k in ("sent", "answered", "failed")}
    print(f"{'total':>6s} {total['sent']:6d} {total['answered']:8d} {total['failed']:6d}")
    print("\nfailures:" if failures else "\nfailures: none")
    for what, n in failures.most_common():
        print(f"  {n:4d} x {what}")
    print(f"\n{'process':45s} {'RSS start MiB':>13s} {'RSS end MiB':>11s} {'growth':>8s}")
    rss = []
    for name in sorted(set(start) | set(end)):
        a, b = start.get(name, 0) / 2**20, end.get(name, 0) / 2**20
        rss.append({"process": name, "start_mib": round(a, 1), "end_mib": round(b, 1)})
        print(f"{name:45s} {a:13.1f} {b:11.1f} {b - a:+8.1f}")
    return {"minutes": rows, "total": total, "failures": dict(failures), "rss": rss}


def _rss() -> dict[str, int]:
    """RSS of this machine's Serve replica and vLLM engine processes, by process title."""
    out: dict[str, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
        if "ServeReplica:" in title or "EngineCore" in title or "ProxyActor" in title:
            # NOTE: Ray appends the running method to a replica's title (".handle_request...")
            name = title.removeprefix("ray::").split(".", 1)[0]
            while name in out:
                name += "+"
            out[name] = rss
    return out


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
