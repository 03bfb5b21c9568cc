"""Replica metrics without Ray: bounded adapter labels, and what a request and pool events count."""

import pytest

from serve_app.deployments.metrics import BASE, OTHER, AdapterLabels, ReplicaMetrics


def test_labels_are_bounded_for_100k_adapters():
    label = AdapterLabels(limit=100)
    values = {label(f"a{i}") for i in range(100_000)}
    assert len(values) == 101 and OTHER in values
    assert label("a7") == "a7" and label("a99999") == OTHER and label(None) == BASE


def test_request_counts_hits_misses_tokens_and_outcome():
    m = ReplicaMetrics(AdapterLabels(limit=2))
    with m.request(["x"], resident=[False]) as r:
        r.saw({"usage": {"completion_tokens": 7}})
    with m.request(["x"], resident=[True]) as r:
        for chunk in ["data: {}\n\n", "data: {}\n\n", "data: [DONE]\n\n"]:
            r.saw(chunk)
    with pytest.raises(RuntimeError), m.request(["y"], resident=[True]):
        raise RuntimeError("engine failed")
    with m.request([], resident=[]):
        pass
    with m.request(["z"], resident=[False]):  # third distinct name: over the limit of 2
        pass
    c = m.counts
    assert c[("requests_ok", "x")] == 2 and c[("output_tokens", "x")] == 9
    assert c[("cache_misses", "x")] == 1 and c[("cache_hits", "x")] == 1
    assert c[("requests_error", "y")] == 1 and ("requests_ok", "y") not in c
    assert c[("requests_ok", BASE)] == 1 and c[("requests_ok", OTHER)] == 1
    assert m.ongoing == 0


def test_unary_call_closing_the_generator_counts_as_ok():
    m = ReplicaMetrics()

    def gen():
        with m.request(["x"], resident=[True]):
            yield {"usage": {"completion_tokens": 1}}

    g = gen()
    next(g)
    g.close()  # what LLMDeployment.complete does after the one item
    assert m.counts[("requests_ok", "x")] == 1


def test_pool_events_count_loads_failures_evictions():
    m = ReplicaMetrics()
    m.on_pool_event("x", "resolving", {})
    m.on_pool_event("x", "ready", {"load_s": 0.2})
    m.on_pool_event("x", "evicted", {"reason": "lru"})
    m.on_pool_event("y", "failed", {"error": "bad"})
    assert m.counts == {("loads", "x"): 1, ("evicted", "x"): 1, ("load_failures", "y"): 1}
