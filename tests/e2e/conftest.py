"""One real application for all end-to-end tests: real Ray Serve, real vLLM CPU engine, real
Transformers+PEFT engine (the reference) and the Diffusers deployment, on the tiny
demo models built by the same builder ``make run`` uses. Started once for this folder.
"""

import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port
from tests.ray_start import init_ray

ADMIN_TOKEN = "e2e-admin-token"
BASE = "tiny-llama"
REF_BASE = "tiny-llama-ref"  # same weights, Transformers+PEFT engine, adapters prefixed "ref-"
CLUSTER: dict[str, str] = {}  # what the app fixture started: "dashboard_url"


@pytest.fixture(scope="session")
def demo_assets() -> dict:
    from serve_app.demo.__main__ import build_all

    root = Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo"))
    return build_all(root)


def app_config(assets: dict) -> dict:
    llm = assets["llm"]
    adapters = [{"name": n, "source": p} for n, p in llm["adapters"].items()]
    text_common = {"model": llm["base"], "dtype": "float32", "max_model_len": 256}
    cfg = {
        "admin_token": ADMIN_TOKEN,
        "sources": {"allowed_roots": [str(Path(llm["base"]).parents[1]), "/tmp"]},
        "llm": [
            {
                "name": BASE,
                **text_common,
                "max_loras": 3,
                "max_cpu_loras": 4,
                "max_lora_rank": 16,
                "engine_kwargs": {"enforce_eager": True},
                "adapters": adapters,
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
            },
            {
                "name": REF_BASE,
                **text_common,
                "engine": "peft",
                "base_aliases": [BASE],  # the demo adapters name their base "tiny-llama"
                "max_loras": 4,
                "adapters": [{**a, "name": f"ref-{a['name']}"} for a in adapters],
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.2}},
            },
        ],
    }
    from tests.e2e.image_config import image_config

    cfg["image"] = [image_config(assets["image"])]
    return cfg


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """Ray's metrics export port of the app's node (Prometheus text at /metrics)."""
    return free_port()


@pytest.fixture(scope="package")
def app_url(demo_assets: dict, metrics_port: int, tmp_path_factory) -> str:
    """Start the app on a free port; yield its base URL; shut Ray down after this folder."""
    import ray
    from ray import serve

    from serve_app import build_app

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    port = free_port()
    # The dashboard takes job submissions (tests/e2e/test_batch_job.py); jobs run `python` from
    # the cluster's PATH: the venv's first, as `make run` does.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    ctx = init_ray(
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},  # scraped by test_metrics.py
    )
    CLUSTER["dashboard_url"] = f"http://{ctx.dashboard_url}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = {**app_config(demo_assets), "state_dir": str(tmp_path_factory.mktemp("state"))}
    serve.run(build_app(cfg), name="loraserve", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url)
    yield url
    serve.shutdown()
    ray.shutdown()


def _wait_ready(url: str, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("app did not become ready")


@pytest.fixture
def http(app_url: str):
    with httpx.Client(base_url=app_url, timeout=120) as client:
        yield client


@pytest.fixture
def admin(app_url: str):
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=app_url, timeout=120, headers=headers) as client:
        yield client


@pytest.fixture
def oai(app_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0, timeout=120)


def llm_snapshot(base: str = BASE) -> dict:
    """The LLM replica's pool and engine view (through a Serve handle, as an operator would)."""
    from ray import serve

    handle = serve.get_deployment_handle(f"llm:{base}", app_name="loraserve")
    return handle.adapter_snapshot.remote().result()
