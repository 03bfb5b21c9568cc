"""deployments/warming.py with a real AdapterPool and DemandBook, the registry faked as its two
calls: a joining replica loads the book's warm set, hottest first, within its free slots and its
time limit; a failing or unknown adapter is skipped; reports carry counts and residency."""

import asyncio

from adapters.pool import AdapterPool
from adapters.spec import AdapterSpec
from serve_app.deployments.warming import DemandReporter, warm
from serve_app.routing.demand import DemandBook


class Remote:
    def __init__(self, fn) -> None:
        self.fn = fn

    async def remote(self, *args):
        return self.fn(*args)


class Registry:
    """The registry deployment's demand calls, on a real DemandBook (handles' ``.remote``)."""

    def __init__(self) -> None:
        self.book = DemandBook()
        self.report_demand = Remote(
            lambda base, rid, counts, held: self.book.report(rid, counts, held)
        )
        self.warm_set = Remote(
            lambda base, k, rid, hot: self.book.warm_set(k, joining=rid, hot_factor=hot)
        )


def make_pool(slow: set[str] = frozenset()) -> AdapterPool:
    class Prepared:
        size_bytes = 1

    async def prepare(spec: AdapterSpec) -> Prepared:
        if spec.source == "/broken":
            raise OSError("broken")
        await asyncio.sleep(5 if spec.name in slow else 0)
        return Prepared()

    async def noop(*_) -> None:
        return None

    return AdapterPool(prepare=prepare, load=noop, unload=noop, max_count=4)


SPECS = {n: AdapterSpec(name=n, source=f"/a/{n}") for n in ("a", "b", "c", "d")}


def test_joining_replica_warms_hottest_within_free_slots() -> None:
    async def run() -> None:
        reg = Registry()
        reg.book.report("r1", {"a": 60, "b": 10, "c": 6, "d": 4}, ["a"])
        pool = make_pool()
        await pool.pin(SPECS["d"])  # one slot taken: two left
        loaded = await warm(pool, reg, "base", "new", SPECS, slots=3)
        assert loaded == ["a", "b"]  # a: 0.75 x 2 = 1.5 copies wanted, one held; b: 0.25, none
        assert set(pool.resident()) == {"a", "b", "d"}

    asyncio.run(asyncio.wait_for(run(), 20))


def test_warming_is_bounded_and_best_effort() -> None:
    async def run() -> None:
        reg = Registry()
        reg.book.report("r1", {"a": 30, "b": 20, "c": 10, "gone": 9}, [])
        specs = {**SPECS, "b": AdapterSpec(name="b", source="/broken")}
        pool = make_pool(slow={"c"})
        # "b" fails to load, "c" outlasts the time limit, "gone" is not in the catalogue:
        # the replica still starts, with what it could load.
        loaded = await warm(pool, reg, "base", "new", specs, slots=4, timeout_s=1.0)
        assert loaded == ["a"] and pool.resident() == ["a"]
        assert await warm(pool, reg, "base", "new", specs, slots=4, timeout_s=0) == []

    asyncio.run(asyncio.wait_for(run(), 20))


def test_reporter_sends_counts_and_residency() -> None:
    async def run() -> None:
        reg = Registry()
        pool = make_pool()
        await pool.ensure(SPECS["a"])
        rep = DemandReporter(reg, "base", "r1", pool)
        rep.requested(["a", "a", "b"])
        rep.requested(["b"])
        await rep.report()
        (report,) = reg.book.live().values()
        assert report.held == {"a"}
        assert {k: round(v, 3) for k, v in report.counts.items()} == {"a": 2.0, "b": 2.0}
        # 2 replicas with r2: a (half the requests) wants one copy and has it; b has none.
        assert reg.book.warm_set(2, joining="r2") == ["b"]

    asyncio.run(asyncio.wait_for(run(), 20))
