"""The batch benchmark's machinery: build the adapters and the batch files, start the app (one
LLM replica, one image replica) with a dashboard for job submission, drive each path, then run
the offline baselines in their own processes with the app stopped."""

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.ports import free_port

BASE, IMAGE = "tiny-llama", "tiny-sd"
ROOT = Path(__file__).parents[2]
# The same engine settings everywhere; one CPU thread per engine (Ray sets OMP_NUM_THREADS from
# the replica's num_cpus; the offline paths get the same).
ENGINE = {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 16, "max_model_len": 512}
THREADS = 1
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
       "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


@dataclass(frozen=True)
class Setup:
    n: int = 1000
    adapters: int = 20
    max_tokens: int = 128
    concurrency: int | None = None  # None: the job's own default; HTTP at the job's figure
    images: int = 48
    paths: tuple[str, ...] = ("job", "http", "offline", "raydata")
    also: tuple[int, ...] = ()  # the job again at these fixed concurrencies (e.g. the old 16)
    # The LLM replica's max_ongoing_requests and vLLM max_num_seqs (None: the app's defaults,
    # 64 and vLLM's 128; max_num_seqs None follows max_ongoing); the job's share follows the first.
    max_ongoing: int | None = None
    max_num_seqs: int | None = None
    vary_tokens: bool = False  # max_tokens drawn from [max_tokens / 4, max_tokens] per request
    scheduling_policy: str | None = None  # vLLM's (None: the app's default, priority)


def text_trace(setup: Setup, names: list[str]) -> list[dict]:
    rng = random.Random(7)
    lo = max(1, setup.max_tokens // 4) if setup.vary_tokens else setup.max_tokens
    tokens = lambda: rng.randint(lo, setup.max_tokens)  # noqa: E731
    return [
        {"custom_id": f"t{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": f"{BASE}:{rng.choice(names)}", "prompt": f"Request {i}: a story",
                  "max_tokens": tokens(), "temperature": 0, "ignore_eos": True}}
        for i in range(setup.n)
    ]  # fmt: skip


def image_trace(n: int, names: list[str]) -> list[dict]:
    rng = random.Random(11)
    return [
        {"custom_id": f"i{i}", "method": "POST", "url": "/v1/images/generations",
         "body": {"model": f"{IMAGE}:{rng.choice(names)}", "prompt": "a red fox in snow",
                  "seed": i, "size": "32x32"}}
        for i in range(n)
    ]  # fmt: skip


def main(setup: Setup, out: str) -> None:
    from benchmarks.adapter_copies import make_adapter_copies
    from serve_app.demo.image_assets import build_image_assets
    from serve_app.demo.llm_assets import build_llm_assets

    os.environ.update(ENV)
    root = Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")).resolve()
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    llm = build_llm_assets(root)
    adapters = make_adapter_copies(llm["adapters"]["sql"], setup.adapters, work / "adapters")
    img = build_image_assets(root) if setup.images else None
    text = work / "text.jsonl"
    text.write_text("".join(json.dumps(x) + "\n" for x in text_trace(setup, list(adapters))))
    results: dict[str, dict] = {}
    if {"job", "http"} & set(setup.paths) or img:
        results.update(_app_paths(setup, llm, adapters, img, work, text))
    spec = work / "spec.json"
    spec.write_text(json.dumps({"base": llm["base"], "adapters": adapters, "engine": ENGINE}))
    for which in ("offline", "raydata"):
        if which in setup.paths:
            results[which] = _offline(which, text, spec, work)
    _report(results, setup)
    Path(out).write_text(json.dumps({"setup": asdict(setup), "results": results}, indent=2))
    print(f"wrote {out} (work files in {work})")


def _config(llm: dict, adapters: dict, img: dict | None, setup: Setup) -> dict:
    seqs_n = setup.max_num_seqs or setup.max_ongoing
    seqs = {"max_num_seqs": seqs_n} if seqs_n else {}
    policy = {"scheduling_policy": setup.scheduling_policy} if setup.scheduling_policy else {}
    ongoing = {"max_ongoing_requests": setup.max_ongoing} if setup.max_ongoing else {}
    cfg = {
        "sources": {"allowed_roots": [str(Path(llm["base"]).parents[1]), tempfile.gettempdir()]},
        "llm": [{
            "name": BASE, "model": llm["base"], "dtype": "float32", **ENGINE,
            "engine_kwargs": {"enforce_eager": True, **seqs, **policy},
            "adapters": [{"name": n, "source": p} for n, p in adapters.items()],
            "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": THREADS},
                           **ongoing},
        }],
    }  # fmt: skip
    if img:
        cfg["image"] = [{
            "name": IMAGE, "model": img["base"], "max_adapters": 8, "max_size": 64,
            "default_size": 32, "default_steps": 2, "max_steps": 8,
            "adapters": [{"name": n, **a} for n, a in img["adapters"].items()],
            "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}},
        }]  # fmt: skip
    return cfg


def _app_paths(setup, llm, adapters, img, work: Path, text: Path) -> dict[str, dict]:
    import ray
    from ray import serve
    from ray.job_submission import JobSubmissionClient

    from serve_app import build_app

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    port = free_port()
    ctx = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                   dashboard_port=free_port(), log_to_driver=False)  # fmt: skip
    out: dict[str, dict] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(_config(llm, adapters, img, setup)), name="loraserve")
        url = f"http://127.0.0.1:{port}"
        httpx.post(f"{url}/v1/completions", json={"model": BASE, "prompt": "warm",
                   "max_tokens": 2}, timeout=600).raise_for_status()  # fmt: skip
        client = JobSubmissionClient(f"http://{ctx.dashboard_url}")
        share = _job_concurrency()
        runs = [("job", setup.concurrency), *((f"job-c{c}", c) for c in setup.also)]
        for name, conc in runs + [("http", setup.concurrency or share[BASE])]:
            if name.split("-")[0] in setup.paths:
                out[name] = _measure(name, client, url, text, work, conc, f"llm:{BASE}")
                out[name]["concurrency"] = conc or share[BASE]
        if img:
            names = sorted(img["adapters"])
            images = work / "images.jsonl"
            images.write_text(
                "".join(json.dumps(x) + "\n" for x in image_trace(setup.images, names))
            )
            # NOTE: every image adapter resident before either path (the working set holds them
            # all), so neither pays the first loads for the other.
            for n in names:
                warm = {"model": f"{IMAGE}:{n}", "prompt": "warm", "size": "32x32"}
                httpx.post(
                    f"{url}/v1/images/generations", json=warm, timeout=600
                ).raise_for_status()
            conc = setup.concurrency or share[IMAGE]
            for path in ("job", "http"):
                c = setup.concurrency if path == "job" else conc
                out[f"images-{path}"] = _measure(
                    path, client, url, images, work, c, f"image:{IMAGE}"
                )
                out[f"images-{path}"]["concurrency"] = conc
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def _loads(deployment: str) -> int:
    from ray import serve

    h = serve.get_deployment_handle(deployment, app_name="loraserve")
    return int(h.adapter_snapshot.remote().result(timeout_s=60).get("loads", 0))


def _job_concurrency() -> dict[str, int]:
    """Per base, what the job keeps in flight by default (from the app's own capacity)."""
    from ray import serve

    from serve_app.jobs.batch import batch_share

    cap = serve.get_app_handle("loraserve").capacity.remote().result(timeout_s=60)
    return {b: batch_share(c["slots"]) for b, c in cap.items()}


def _measure(
    path: str, client, url: str, trace: Path, work: Path, conc: int | None, deployment: str
) -> dict:
    from ray.job_submission import JobStatus

    loads = _loads(deployment)
    out = work / f"{trace.stem}-{path}-out.jsonl"
    t = time.perf_counter()
    extra: dict = {}
    if path.startswith("job"):
        probe = _OnlineProbe(url, deployment)
        flag = f" --concurrency {conc}" if conc else ""
        entry = (f"python -m serve_app.jobs.batch --input {trace} --output {out}{flag} "
                 "--progress-s 30")  # fmt: skip
        job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(ROOT)})
        with probe:
            while not (status := client.get_job_status(job)).is_terminal():
                time.sleep(0.5)
        logs = client.get_job_logs(job)
        if status != JobStatus.SUCCEEDED:
            raise RuntimeError(f"batch job {status}:\n{logs[-3000:]}")
        m = re.search(r"batch done: .*?, ([\d.]+)s, ([\d.]+) req/s", logs)
        extra = {"job_own_s": float(m.group(1))} if m else {}
        extra |= probe.figures()
    else:
        asyncio.run(_naive(url, trace, out, conc))
    wall = time.perf_counter() - t
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    ok = [r for r in rows if r["response"]["status_code"] == 200]
    tokens = sum(r["response"]["body"].get("usage", {}).get("completion_tokens", 0) for r in ok)
    return {"requests": len(rows), "ok": len(ok), "wall_s": wall, "req_per_s": len(rows) / wall,
            "tok_per_s": tokens / wall, "adapter_loads": _loads(deployment) - loads,
            **extra}  # fmt: skip


class _OnlineProbe:
    """An online user beside the job: one short request a second over HTTP (the base model for
    text, so it never waits for an adapter load), its latency recorded while the job runs."""

    def __init__(self, url: str, deployment: str) -> None:
        if deployment.startswith("image:"):
            self.path = "/v1/images/generations"
            self.body = {"model": IMAGE, "prompt": "probe", "size": "32x32"}
        else:
            self.path = "/v1/completions"
            self.body = {"model": BASE, "prompt": "probe", "max_tokens": 16, "temperature": 0}
        self.url, self.lat, self.errors = url, [], 0
        self.stop = threading.Event()

    def __enter__(self) -> "_OnlineProbe":
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=600) as http:
            while not self.stop.wait(1.0):
                t = time.perf_counter()
                if http.post(self.path, json=self.body).status_code == 200:
                    self.lat.append(time.perf_counter() - t)
                else:
                    self.errors += 1

    def figures(self) -> dict:
        lat = sorted(self.lat)
        if not lat:
            return {}
        q = lambda p: 1000 * lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
        return {"online_n": len(lat), "online_errors": self.errors, "online_p50_ms": q(0.5),
                "online_p99_ms": q(0.99)}  # fmt: skip


async def _naive(url: str, trace: Path, out: Path, concurrency: int) -> None:
    """A plain client: each line POSTed in file order, ``concurrency`` at a time."""
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    sem = asyncio.Semaphore(concurrency)
    with out.open("w") as f:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:

            async def one(line: dict) -> None:
                async with sem:
                    r = await http.post(line["url"], json=line["body"])
                resp = {"status_code": r.status_code, "body": r.json()}
                f.write(json.dumps({"custom_id": line["custom_id"], "response": resp}) + "\n")

            await asyncio.gather(*(one(x) for x in lines))


def _offline(which: str, trace: Path, spec: Path, work: Path) -> dict:
    log = work / f"{which}.log"
    cmd = [sys.executable, "-m", "benchmarks.batch.offline", which, "--trace", str(trace),
           "--spec", str(spec)]  # fmt: skip
    with log.open("w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        try:
            proc.wait(timeout=3600)
        finally:  # its engine process outlives it (it exits with os._exit): end the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    return {"error": f"no result; see {log}"}


def _report(results: dict[str, dict], setup: Setup) -> None:
    print(f"\n{setup.n} text requests over {setup.adapters} adapters, {setup.max_tokens} tokens "
          f"each; {setup.images} image requests; one LLM replica")  # fmt: skip
    print(f"{'path':<14} {'conc':>5} {'req/s':>8} {'tok/s':>9} {'wall s':>8} {'loads':>6}  note")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<14} {'-':>5} {'-':>8} {'-':>9} {'-':>8} {'-':>6}  "
                  f"FAILED: {r['error'][:300]}")  # fmt: skip
            continue
        note = f"job's own time {r['job_own_s']:.1f}s" if "job_own_s" in r else ""
        if "online_p50_ms" in r:
            p50, p99 = r["online_p50_ms"], r["online_p99_ms"]
            note += (f"; online ({r['online_n']} req, {r['online_errors']} err): "
                     f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")  # fmt: skip
        if "engine_start_s" in r:
            note = f"generate only; its engine start took {r['engine_start_s']:.1f}s more"
        if "start_s" in r:
            note = (f"incl. its engine start ({r['start_s']:.1f}s); without: "
                    f"{r['steady_req_per_s']:.2f} req/s")  # fmt: skip
        print(f"{name:<14} {r.get('concurrency', '-'):>5} {r['req_per_s']:>8.2f} "
              f"{r['tok_per_s']:>9.1f} {r['wall_s']:>8.1f} {r.get('adapter_loads', '-'):>6}  "
              f"{note}")  # fmt: skip

    def ratio(a: str, b: str) -> str:
        ok = a in results and b in results and "error" not in results[a] | results[b]
        return f"{results[a]['req_per_s'] / results[b]['req_per_s']:.2f}x" if ok else "n/a"

    print(f"job / http: {ratio('job', 'http')}   job / offline vLLM: {ratio('job', 'offline')}   "
          f"job / Ray Data: {ratio('job', 'raydata')}   images job / http: "
          f"{ratio('images-job', 'images-http')}")  # fmt: skip
    for c in setup.also:
        print(f"job at concurrency {c} / offline vLLM: {ratio(f'job-c{c}', 'offline')}   "
              f"job default / job at {c}: {ratio('job', f'job-c{c}')}")  # fmt: skip
    if "steady_req_per_s" in results.get("raydata", {}) and "req_per_s" in results.get("job", {}):
        steady = results["job"]["req_per_s"] / results["raydata"]["steady_req_per_s"]
        print(f"job / Ray Data without its engine start: {steady:.2f}x")
