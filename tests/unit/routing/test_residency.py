"""What a replica publishes for routing (no Ray: the reporter only counts outside a replica)."""

from serve_app.routing.publisher import ResidencyReporter
from serve_app.routing.stats import RoutingStats


def test_routing_stats_from_a_pool_snapshot():
    snap = {"resident": ["a", "b"], "loading": ["c"], "capacity": 3}
    s1 = RoutingStats.from_pool(snap, ongoing=2, last_used={"a": 5.0, "b": 1.0})
    assert s1.resident == ("a", "b") and s1.loading == ("c",) and s1.slots == 3
    assert s1.ongoing == 2 and s1.held == ["a", "b", "c"]
    assert s1.victims == (("b", 1.0), ("a", 5.0))  # least recently used first
    assert RoutingStats.from_pool(snap).seq > s1.seq  # newer reports carry higher numbers


def test_routing_stats_prefers_the_pools_eviction_order():
    snap = {"resident": ["a", "b"], "loading": [], "capacity": 2, "eviction_order": ["a", "b"]}
    stats = RoutingStats.from_pool(snap, last_used={"a": 9.0, "b": 1.0})
    assert [v[0] for v in stats.victims] == ["a", "b"]


def test_routing_stats_cross_as_a_plain_dict_and_back():
    stats = RoutingStats.from_pool(
        {"resident": ["a"], "capacity": 2}, last_used={"a": 3.0}, local=["b"]
    )
    assert RoutingStats.parse(stats.as_dict()) == stats
    assert RoutingStats.parse({}) is None and RoutingStats.parse(None) is None


def test_reporter_publishes_the_adapters_on_its_nodes_disk_that_it_does_not_hold():
    class Pool:
        def snapshot(self):
            return {"resident": ["a"], "loading": ["b"], "capacity": 3}

    rep = ResidencyReporter()
    rep.bind(Pool())
    assert rep.stats().local == ()
    rep.local = lambda: {"a", "b", "d", "c"}
    assert rep.stats().local == ("c", "d")

    def broken():
        raise OSError("disk gone")

    rep.local = broken  # a hint only: residency is still published
    assert rep.stats().local == () and rep.stats().resident == ("a",)


def test_reporter_counts_loads_and_evictions_and_forgets_evicted():
    rep = ResidencyReporter()
    with rep.request("a"):
        assert rep.ongoing == 1
    assert rep.ongoing == 0 and "a" in rep.last_used
    for state in ["resolving", "loading", "ready", "evicted"]:
        rep.on_pool_event("a", state, {})
    assert rep.loads == 1 and rep.evictions == 1
    assert "a" not in rep.last_used


def test_reporter_publishes_what_loads_have_cost_recently():
    rep = ResidencyReporter()
    assert rep.stats().load_s == 0.0  # no load yet: routers keep their own waits
    rep.on_pool_event("a", "ready", {"load_s": 8.0})
    assert rep.stats().load_s == 8.0
    rep.on_pool_event("b", "ready", {"load_s": 0.0})  # later loads move it a quarter of the way
    assert rep.stats().load_s == 6.0
    assert RoutingStats.parse(rep.stats().as_dict()).load_s == 6.0
