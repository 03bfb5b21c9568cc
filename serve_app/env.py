"""Every environment variable the project reads, in one place, all with the ``LORASERVE_`` prefix.

(Libraries read their own: HF_TOKEN / HF_HUB_OFFLINE for huggingface_hub, AWS_* for S3.)
"""

import os

PREFIX = "LORASERVE_"


def get(name: str, default: str | None = None) -> str | None:
    return os.environ.get(PREFIX + name, default)


def admin_token() -> str | None:
    """Token for the admin API (``/v1/adapters`` writes); unset means the admin API is closed."""
    return get("ADMIN_TOKEN")


def api_keys() -> list[dict]:
    """API keys as JSON, ``[{"name", "key_sha256", "models": [...]}]``; unset: none (open)."""
    import json

    raw = get("API_KEYS")
    return json.loads(raw) if raw else []


def demo_dir() -> str:
    """Where ``python -m serve_app.demo`` writes the demo assets."""
    return get("DEMO_DIR", ".demo")


def state_dir() -> str:
    """Where the registry keeps the adapter catalogue (``state_dir`` in the config)."""
    return get("STATE_DIR", "~/.local/state/loraserve")


def adapter_cache_dir() -> str | None:
    """This node's adapter disk cache, when set: it overrides the config's ``sources.cache_dir``
    for the replicas on the node (set it in the node's environment, e.g. on ``ray start``, where
    nodes keep their local disk at different paths)."""
    return get("ADAPTER_CACHE_DIR")


def cache_dir() -> str:
    """Downloads kept across demo rebuilds (e.g. the SmolLM2 wheel); default ~/.cache/loraserve."""
    return get("CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "loraserve"))


# Ray Serve settings this project runs with by default; they must be in the environment of the
# processes that start Ray (``serve run``, ``ray start``), so they are applied where those start:
# ``make run`` (serve_app.usage), the test suite, the benchmarks, cluster.yaml, deploy/.
# RAY_SERVE_THROUGHPUT_OPTIMIZED: gRPC between deployments, user code and the router on the
# replica's own event loop (no extra thread hop), buffered request logs, GC frozen after start;
# measured by benchmarks/llm_vs_vllm: 21% less CPU per short request, most of it in the proxy,
# ingress and model replica. Except its request-log buffer: that mode keeps 1,000 log records
# in memory before writing, so a quiet replica's adapter loads and evictions would not reach its
# log for hours; records are written as they happen. And except its direct ingress (the ingress
# replica listening on a port of its own for an external load balancer): that mode then starts
# an HTTP proxy on the head node only and holds every ingress replica 30 s when it stops; here
# each node keeps its proxy (multi-node serving, cluster.yaml) and nothing waits for a balancer
# we do not have. A value already set wins (export RAY_SERVE_THROUGHPUT_OPTIMIZED=0).
RAY_DEFAULTS = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
}


def apply_ray_defaults(driver: bool = False) -> None:
    """Set ``RAY_DEFAULTS`` in this process's environment where not set already, for the Ray
    processes it starts. ``driver``: this process also calls Serve handles itself; its own Serve
    settings are fixed first, as they were (in throughput-optimized mode a handle's router runs on
    the caller's event loop, so a synchronous ``handle.remote().result()`` outside asyncio fails).
    """
    if driver:
        import ray.serve._private.constants  # noqa: F401  (read once, at import)
    for name, value in RAY_DEFAULTS.items():
        os.environ.setdefault(name, value)
