"""The soak's machinery: start the demo app in a fresh state directory, send the mix, report."""

import asyncio
import json
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from benchmarks.ports import free_port

TEXT, REF, IMAGE = "smollm2", "smollm2-ref", "tiny-sd"  # configs/demo.yaml's bases
TEXT_MODELS = [TEXT, *(f"{TEXT}:{a}" for a in ("pirate", "french", "sql", "short"))]
REF_MODELS = [REF, f"{REF}:ref-pirate", f"{REF}:ref-sql"]  # Transformers + PEFT
# NOTE: five LoRAs over a working set of four: images also exercise eviction and reloads.
IMAGE_MODELS = [IMAGE, *(f"{IMAGE}:{a}" for a in ("pixel", "sketch", "style3d", "kohya", "cereal"))]
# (share of requests, kind); "ref" goes to the PEFT engine, every other one streamed; "leave" is
# a streamed completion the client leaves after LEAVE_AFTER lines (its generation is cancelled)
MIX = [(0.25, "completion"), (0.15, "chat"), (0.20, "completion-stream"), (0.10, "chat-stream"),
       (0.05, "leave"), (0.10, "ref"), (0.15, "image")]  # fmt: skip
LEAVE_AFTER = 3


@dataclass(frozen=True)
class Setup:
    minutes: float = 10.0
    rate: float = 1.2  # what the 2-core machine serves steadily (~2 req/s saturate it)
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

    cfg = _config(Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")).resolve())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    port = free_port()
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


def _config(demo: Path) -> dict:
    """configs/demo.yaml with its ``.demo`` paths under ``demo`` (built first if it is not) and a
    fresh state directory and disk cache."""
    from serve_app.config import AppConfig

    if not (demo / ".built").exists():
        from serve_app.demo.__main__ import build_all

        build_all(demo)
        (demo / ".built").touch()

    def at(path: str) -> str:
        return str(demo / Path(path).relative_to(".demo")) if path.startswith(".demo") else path

    cfg = AppConfig.from_yaml("configs/demo.yaml").model_dump(mode="json")
    for m in [*cfg["llm"], *cfg["image"]]:
        m["model"] = at(m["model"])
        for a in m["adapters"]:
            a["source"] = at(a["source"])
    cfg["sources"]["allowed_roots"] = [at(r) for r in cfg["sources"]["allowed_roots"]]
    cfg["state_dir"] = tempfile.mkdtemp(prefix="soak-state-")
    cfg["sources"]["cache_dir"] = tempfile.mkdtemp(prefix="soak-cache-")
    return cfg


def _body(kind: str, i: int) -> tuple[str, dict]:
    rng = random.Random(i)
    if kind == "ref":  # the PEFT engine runs one request at a time: short ones
        body = {"model": rng.choice(REF_MODELS), "prompt": "Once upon a time", "seed": i,
                "max_tokens": rng.choice([8, 16]), "temperature": 0.7,
                "stream": bool(i % 2)}  # fmt: skip
        return "/v1/completions", body
    if kind == "image":
        body = {"model": rng.choice(IMAGE_MODELS), "prompt": "a lighthouse", "seed": i,
                "size": "32x32", "num_inference_steps": 2}  # fmt: skip
        return "/v1/images/generations", body
    model = rng.choice(TEXT_MODELS)
    common = {"model": model, "max_tokens": rng.choice([8, 16, 32]), "temperature": 0.7, "seed": i}
    common["stream"] = kind.endswith("-stream") or kind == "leave"
    if kind == "leave":  # long enough to be cut short
        common |= {"max_tokens": 128, "ignore_eos": True, "leave": True}
    if kind.startswith("chat"):
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": "Hi"}]}
    return "/v1/completions", {**common, "prompt": "Once upon a time"}


async def _one(client: httpx.AsyncClient, path: str, body: dict) -> str | None:
    """None if answered in full; else what went wrong."""
    if not body.get("stream"):
        resp = await client.post(path, json=body)
        return None if resp.status_code == 200 else f"{resp.status_code} {resp.text[:200]}"
    leave = body.pop("leave", False)
    async with client.stream("POST", path, json=body) as resp:
        if resp.status_code != 200:
            return f"{resp.status_code} {(await resp.aread())[:200]!r}"
        done, events = False, 0
        async for line in resp.aiter_lines():
            if '"error"' in line:
                return f"in-stream error: {line[:200]}"
            done = done or line == "data: [DONE]"
            events += line.startswith("data: ")
            if leave and events >= LEAVE_AFTER:
                return None  # NOTE: closing the stream here is the client going away
    return None if done else "stream ended without [DONE]"


async def _soak(url: str, setup: Setup) -> dict:
    kinds = [k for _, k in MIX]
    weights = [w for w, _ in MIX]
    minutes: list[Minute] = []
    by_kind: dict[str, list[float]] = {k: [] for k in kinds}
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(setup.max_inflight)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await _wait_ready(client)
        for kind in kinds:  # warm every path once (vLLM, images, adapters)
            await _one(client, *_body(kind, 0))
        rss = [_rss()]  # after the warm-up, then at the end of every minute
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
                by_kind[kind].append(time.monotonic() - t)
            else:
                minute.failed += 1
                failures[f"{kind}: {problem}"] += 1

        i = 0
        while (elapsed := time.monotonic() - started) < setup.minutes * 60:
            m = int(elapsed // 60)
            while len(minutes) <= m:
                if minutes:
                    _print_minute(len(minutes), minutes[-1])
                    rss.append(_rss())
                minutes.append(Minute())
            minutes[m].sent += 1
            task = asyncio.create_task(send(i, minutes[m]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, started + i / setup.rate - time.monotonic()))
        await asyncio.gather(*tasks)  # NOTE: bounded: every request has a client timeout
        _print_minute(len(minutes), minutes[-1])
        rss.append(_rss())
    return _report(minutes, by_kind, failures, rss)


def _print_minute(n: int, m: Minute) -> None:
    p50, p99 = _pct(m.latencies, 0.5), _pct(m.latencies, 0.99)
    print(f"  minute {n}: sent {m.sent} answered {m.answered} failed {m.failed} "
          f"p50 {p50:.3f}s p99 {p99:.3f}s", flush=True)  # fmt: skip


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _report(
    minutes: list[Minute], by_kind: dict[str, list[float]], failures: Counter, rss: list[dict]
) -> dict:
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
    kinds = {k: {"answered": len(v), "p50_s": round(_pct(v, 0.5), 4),
                 "p99_s": round(_pct(v, 0.99), 4)} for k, v in by_kind.items()}  # fmt: skip
    print(f"\n{'kind':18s} {'answered':>8s} {'p50 s':>7s} {'p99 s':>7s}")
    for k, r in kinds.items():
        print(f"{k:18s} {r['answered']:8d} {r['p50_s']:7.3f} {r['p99_s']:7.3f}")
    print("\nfailures:" if failures else "\nfailures: none")
    for what, n in failures.most_common():
        print(f"  {n:4d} x {what}")
    return {"minutes": rows, "total": total, "kinds": kinds, "failures": dict(failures),
            "rss": _rss_report(rss)}  # fmt: skip


def _rss_report(samples: list[dict[str, int]]) -> list[dict]:
    """Per process: RSS after the warm-up, at each minute's end, and the growth rate in the
    first and the second half of the run (MiB/min): a leak keeps its rate, warm-up levels off."""
    print(f"\n{'process':40s} {'start MiB':>9s} {'end MiB':>8s} {'growth':>7s} "
          f"{'MiB/min 1st half':>16s} {'2nd half':>8s}")  # fmt: skip
    half = (len(samples) - 1) // 2
    out = []
    for name in sorted(set().union(*samples)):
        mib = [round(s.get(name, 0) / 2**20, 1) for s in samples]
        first = (mib[half] - mib[0]) / max(half, 1)
        second = (mib[-1] - mib[half]) / max(len(mib) - 1 - half, 1)
        out.append({"process": name, "start_mib": mib[0], "end_mib": mib[-1],
                    "per_minute_mib": mib, "mib_per_min_first_half": round(first, 2),
                    "mib_per_min_second_half": round(second, 2)})  # fmt: skip
        print(f"{name:40s} {mib[0]:9.1f} {mib[-1]:8.1f} {mib[-1] - mib[0]:+7.1f} "
              f"{first:+16.2f} {second:+8.2f}")  # fmt: skip
    return out


def _rss() -> dict[str, int]:
    """RSS of this run's Serve proxy, replica and vLLM processes (engine core and worker; those
    descended from this process, which started the local Ray cluster), by process title."""
    out: dict[str, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in _descendants():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
        if "ServeReplica:" in title or "VLLM::" in title or "ProxyActor" in title:
            # NOTE: Ray appends the running method to a replica's title (".handle_request...")
            name = title.removeprefix("ray::").split(".", 1)[0]
            while name in out:
                name += "+"
            out[name] = rss
    return out


def _descendants() -> list[str]:
    """PIDs below this process (NOTE: other users' clusters on the machine are not ours)."""
    parent: dict[str, str] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
    me, out = str(os.getpid()), []
    for pid in parent:
        p = parent[pid]
        for _ in range(64):
            if p == me or p not in parent:
                break
            p = parent[p]
        if p == me:
            out.append(pid)
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
