"""routing/demand.py: what a joining replica warms, from the replicas' demand reports."""

from serve_app.routing.demand import DemandBook, DemandCounter
from serve_app.routing.policy import Fleet, Knobs, ReplicaView, RequestView


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_counter_halves_every_half_life() -> None:
    clock = Clock()
    c = DemandCounter(half_life_s=10, clock=clock)
    c.add(["a"] * 8)
    c.add(["b"])
    clock.t = 10
    c.add(["b"])
    top = c.top(5)
    assert round(top["a"], 6) == 4.0 and round(top["b"], 6) == 1.5
    assert list(c.top(1)) == ["a"]
    clock.t = 10 + 10 * 40  # long idle: counts fade out, and the rebase keeps them finite
    assert c.top(5) == {}


def test_warm_set_is_the_hot_under_replicated_then_the_unheld() -> None:
    book = DemandBook()
    # Two replicas, 75 requests; "hot" has 80% of them and one holder: with a third replica the
    # router wants 0.8 x 3 = 2.4 copies, so it spills there. "cold" is demanded and held nowhere.
    # "fine" (13%, one holder) wants 0.4 copies: enough. "once" was requested once.
    book.report("r1", {"hot": 50, "fine": 6, "cold": 2}, ["hot", "fine"])
    book.report("r2", {"hot": 10, "fine": 4, "cold": 2, "once": 1}, ["x"])
    assert book.warm_set(4, joining="new") == ["hot", "cold"]
    assert book.warm_set(1, joining="new") == ["hot"]
    assert book.warm_set(0, joining="new") == []
    # hot_factor is the router's: 3x as eager, "fine" wants 1.2 copies, more than its holder.
    assert book.warm_set(4, joining="new", hot_factor=3.0) == ["hot", "cold", "fine"]


def test_reports_expire_and_the_joining_replica_is_not_counted() -> None:
    clock = Clock()
    book = DemandBook(max_age_s=10, clock=clock)
    book.report("r1", {"a": 10}, ["a"])
    clock.t = 5
    book.report("r2", {"b": 10}, [])
    assert book.warm_set(4, joining="r2") == ["a"]  # r2's own report is not a peer's
    clock.t = 12  # r1 is gone: its demand no longer counts
    assert book.warm_set(4, joining="new") == ["b"]
    assert DemandBook().warm_set(4) == []


def test_a_warmed_adapter_is_where_the_router_sends_its_requests() -> None:
    """The router (policy.Fleet) sends requests for a warmed hot adapter to the new replica:
    it is a holder and the least loaded one."""
    book = DemandBook()
    book.report("r1", {"hot": 40, "b": 5}, ["hot", "b"])
    book.report("r2", {"c": 5}, ["c"])
    warm = book.warm_set(2, joining="r3")
    assert warm[0] == "hot"
    fleet = Fleet(Knobs(hot_min_requests=0))
    fleet.set_replicas(
        [
            ReplicaView("r1", frozenset({"hot", "b"}), ongoing=3, max_ongoing=4, slots=2),
            ReplicaView("r2", frozenset({"c"}), ongoing=1, max_ongoing=4, slots=2),
            ReplicaView("r3", frozenset(warm), ongoing=0, max_ongoing=4, slots=2),
        ]
    )
    for _ in range(40):
        fleet.observe(RequestView(("hot",)))
    d = fleet.decide(RequestView(("hot",)))
    assert d.ids[0] == "r3" and d.kind == "hit"
