"""The router's records (no Ray): what queued, routed and completed requests do to the fleet."""

import time

from serve_app.routing import ledger as ledger_mod
from serve_app.routing.ledger import Ledger
from serve_app.routing.stats import RoutingStats


def stats(seq, resident=(), loading=(), slots=2, victims=()):
    return RoutingStats(seq, tuple(resident), tuple(loading), slots, tuple(victims))


def fleet_of_two() -> Ledger:
    led = Ledger()
    led.report("r0", stats(1, ["a", "b"], victims=[("b", 1.0), ("a", 2.0)]), [], 4)
    led.report("r1", stats(1, ["c", "d"], victims=[("d", 1.0), ("c", 2.0)]), [], 4)
    return led


def test_a_queued_request_guards_its_adapter_until_a_replica_accepts_it():
    led = fleet_of_two()
    led.keep_replicas(["r0"])
    led.routing_started("q1", "b")  # waiting for 'b', held only by r0
    assert led.decide("x1", "new", waited_s=1.0).ids == []  # r0 is guarded: wait
    led.routing_ended("q1")
    assert led.decide("x1", "new", waited_s=1.0).ids == []  # still queued: still guarded
    led.decide("q1", "b", 0.0)
    led.routed("q1", "r0")
    assert led.decide("x1", "new", waited_s=1.0).ids == ["r0"]


def test_a_rejected_attempt_keeps_the_request_queued_until_the_bounce_expires(monkeypatch):
    led = fleet_of_two()
    led.routing_started("q", "b")
    led.routing_ended("q")
    led.completed("q", "r0")  # a replica rejected it: Serve retries it at once
    led.expire()
    assert led.fleet.decide(ledger_mod.RequestView(("new",), 1.0)).ids == ["r1"]
    t = time.monotonic() + ledger_mod.BOUNCE_TTL_S + 0.1
    monkeypatch.setattr(ledger_mod.time, "monotonic", lambda: t)
    led.expire()  # no retry came: forgotten, 'b' no longer wanted
    assert len(led) == 0


def test_routed_then_completed_frees_the_adapter_and_forgets_the_request():
    led = fleet_of_two()
    led.routing_started("q", "b")
    d = led.decide("q", "b", 0.0)
    assert d.kind == "hit" and d.ids[0] == "r0"
    routed = led.routed("q", "r0")
    led.routing_ended("q")
    assert routed.kind == "hit" and routed.key == "b"
    assert led.fleet.in_use("r0") == {"b"}
    led.completed("q", "r1")  # a late completion from another replica changes nothing
    assert led.fleet.in_use("r0") == {"b"}
    led.completed("q", "r0")
    assert led.fleet.in_use("r0") == set() and len(led) == 0
    assert led.decision_counts == {"hit": 1}


def test_a_placed_cold_adapter_counts_as_loading_until_reported():
    led = fleet_of_two()
    led.routing_started("q", "cold")
    rid = led.decide("q", "cold", waited_s=1.0).ids[0]
    assert led.fleet.holders("cold") == {rid}
    # The replica's next report does not show it yet: still expected there.
    led.report(rid, stats(2, ["a", "b"] if rid == "r0" else ["c", "d"]), [], 4)
    assert led.fleet.holders("cold") == {rid}


def test_a_stale_report_is_ignored():
    led = fleet_of_two()
    led.report("r0", stats(5, ["z"]), [], 4)
    led.report("r0", stats(3, ["a"]), [], 4)  # an older poll landing late
    assert led.fleet.holders("z") == {"r0"} and led.fleet.holders("a") == set()


def test_the_oldest_request_for_the_same_adapter_gets_a_found_replica():
    led = fleet_of_two()
    for q in ["old", "new"]:
        led.routing_started(q, "a")
        led.decide(q, "a", 0.0)
    pending = [("other", "c"), ("old", "a"), ("new", "a")]
    assert led.first_in_line("r0", "new", "a", pending) == "old"
    assert led.first_in_line("r0", "old", "a", pending) is None


def test_records_never_closed_are_dropped_with_their_counts(monkeypatch):
    led = fleet_of_two()
    led.routing_started("q", "b")
    led.decide("q", "b", 0.0)
    led.routed("q", "r0")  # never completed
    t = time.monotonic() + led.max_age_s + 61
    monkeypatch.setattr(ledger_mod.time, "monotonic", lambda: t)
    led.expire()
    assert len(led) == 0 and led.fleet.in_use("r0") == set()


def test_a_replica_that_has_not_reported_yet_gets_cold_adapters_too():
    # A replica just started: Serve lists it before its first routing stats land. Cold adapters
    # must not all go to the replica that did report (it would evict its own to take them).
    for newcomer in ("a-new", "z-new"):  # either side of the rendezvous tie-break
        led = Ledger()
        held = {"old": [], newcomer: []}
        led.report("old", stats(1), (), 4)
        led.report(newcomer, None, (), 4)
        for n, adapter in enumerate(["poet", "chef", "pirate", "sql"]):
            rid = led.decide(f"q{n}", adapter, 0.0).ids[0]
            led.routing_started(f"q{n}", adapter)
            led.routed(f"q{n}", rid)
            held[rid] = (held[rid] + [adapter])[-2:]
            led.completed(f"q{n}", rid)
            # the replica that loaded it reports (its pool's events push a report)
            victims = [(a, float(t)) for t, a in enumerate(held[rid])]
            led.report(rid, stats(n + 2, held[rid], victims=victims), held[rid], 4)
        assert held[newcomer], held
        assert sum(len(h) for h in held.values()) == 4, held  # nothing evicted


def test_a_cold_request_goes_where_its_files_are_and_the_decision_says_so():
    assert fleet_of_two().decide("x", "new", 0.0).ids == ["r1"]  # both full, alike: its home
    led = fleet_of_two()
    on_disk = RoutingStats(2, ("a", "b"), (), 2, (("b", 1.0), ("a", 2.0)), local=("new",))
    led.report("r0", on_disk, [], 4)
    led.routing_started("q", "new")
    assert led.decide("q", "new", 0.0).ids == ["r0"]
    routed = led.routed("q", "r0")
    assert (routed.kind, routed.local) == ("cold", True)
    led.routing_started("h", "c")
    led.decide("h", "c", 0.0)
    assert led.routed("h", "r1").local is False  # a hit loads nothing
