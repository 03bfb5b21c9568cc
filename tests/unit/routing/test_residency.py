"""What a replica publishes for routing (no Ray: the reporter only counts outside a replica)."""

from serve_app.deployments.residency import ResidencyReporter, routing_stats


def test_routing_stats_from_a_pool_snapshot():
    snap = {"resident": ["a", "b"], "loading": ["c"], "capacity": 3}
    s1 = routing_stats(snap, ongoing=2, last_used={"a": 5.0, "b": 1.0})
    assert s1["resident"] == ["a", "b"] and s1["loading"] == ["c"] and s1["slots"] == 3
    assert s1["ongoing"] == 2
    assert s1["victims"] == [["b", 1.0], ["a", 5.0]]  # least recently used first
    assert routing_stats(snap)["v"] > s1["v"]  # newer reports carry higher sequence numbers


def test_routing_stats_prefers_the_pools_eviction_order():
    snap = {"resident": ["a", "b"], "loading": [], "capacity": 2, "eviction_order": ["a", "b"]}
    assert [v[0] for v in routing_stats(snap, last_used={"a": 9.0, "b": 1.0})["victims"]] == [
        "a",
        "b",
    ]


def test_reporter_counts_loads_and_evictions_and_forgets_evicted():
    rep = ResidencyReporter()
    with rep.request("a"):
        assert rep.ongoing == 1
    assert rep.ongoing == 0 and "a" in rep.last_used
    for state in ["resolving", "loading", "ready", "evicted"]:
        rep.on_pool_event("a", state, {})
    assert rep.loads == 1 and rep.evictions == 1
    assert "a" not in rep.last_used
