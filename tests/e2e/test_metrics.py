"""Our per-adapter metrics as Prometheus sees them: known traffic to a freshly registered adapter,
then Ray's metrics export endpoint scraped over HTTP until the replica's report arrives."""

import re
import time

import httpx

from tests.e2e.conftest import BASE

PROBE = "metrics-probe"  # registered here only, so its counters start at zero


def _scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def _value(text: str, name: str, **tags: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``tags``."""
    total = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} ([0-9.eE+-]+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(labels.get(k) == v for k, v in tags.items()):
            total += float(m.group(2))
    return total


def _wait_for(port: int, name: str, want: float, **tags: str) -> str:
    """Scrape until ``name`` reaches ``want`` (Ray reports every second here) or 60 s pass."""
    deadline = time.time() + 60
    while True:
        text = _scrape(port)
        if _value(text, name, **tags) >= want or time.time() > deadline:
            return text
        time.sleep(1)


def test_per_adapter_counters_reach_prometheus(admin, oai, demo_assets, metrics_port):
    source = demo_assets["llm"]["adapters"]["sql"]
    r = admin.post("/v1/adapters", json={"base": BASE, "name": PROBE, "source": source})
    assert r.status_code == 201, r.text
    tokens = 0
    for _ in range(5):
        out = oai.completions.create(
            model=f"{BASE}:{PROBE}", prompt="Hello", max_tokens=6, temperature=0
        )
        tokens += out.usage.completion_tokens
    dep = f"llm:{BASE}"
    tags = {"deployment": dep, "adapter": PROBE}
    text = _wait_for(metrics_port, "ray_loraserve_requests_total", 5, outcome="ok", **tags)
    assert _value(text, "ray_loraserve_requests_total", outcome="ok", **tags) == 5
    assert _value(text, "ray_loraserve_requests_total", outcome="error", **tags) == 0
    assert _value(text, "ray_loraserve_output_tokens_total", **tags) == tokens > 0
    # The first request found it cold and loaded it; the next four found it resident.
    assert _value(text, "ray_loraserve_cache_misses_total", **tags) == 1
    assert _value(text, "ray_loraserve_cache_hits_total", **tags) == 4
    assert _value(text, "ray_loraserve_adapter_load_seconds_count", **tags) == 1
    assert _value(text, "ray_loraserve_request_seconds_count", **tags) == 5
    # Per-replica gauges exist for the deployment too.
    assert _value(text, "ray_loraserve_replica_resident_adapters", deployment=dep) >= 1
