"""AdapterPool with versions: a replaced adapter's old weights serve no request once a request
for the new version arrives; a request for an older version (stale catalogue) gets the newest.
And the negative cache: a broken source is not fetched again on every request."""

import asyncio

import pytest

from adapters.errors import AdapterSourceError
from adapters.pool import AdapterPool
from adapters.spec import AdapterSpec


class Prepared:
    def __init__(self, source: str) -> None:
        self.source, self.size_bytes = source, 1


def make_pool(**kw) -> tuple[AdapterPool, dict[str, str], list[str]]:
    engine: dict[str, str] = {}  # name -> source loaded in the "engine"
    unloads: list[str] = []

    async def prepare(spec: AdapterSpec) -> Prepared:
        await asyncio.sleep(0)
        PREPARES.append(spec.source)
        if spec.source.startswith("/missing"):
            raise AdapterSourceError(f"adapter '{spec.name}': {spec.source} does not exist")
        return Prepared(spec.source)

    async def load(spec: AdapterSpec, prepared: Prepared) -> None:
        assert spec.name not in engine, "loaded over a resident adapter"
        engine[spec.name] = prepared.source

    async def unload(name: str) -> None:
        await asyncio.sleep(0)
        unloads.append(name)
        engine.pop(name)

    pool = AdapterPool(prepare=prepare, load=load, unload=unload, max_count=2, **kw)
    return pool, engine, unloads


PREPARES: list[str] = []


def v(source: str, version: int) -> AdapterSpec:
    return AdapterSpec(name="x", source=source, version=version)


def test_new_version_replaces_old_after_its_uses_end():
    asyncio.run(asyncio.wait_for(_test_new_version_replaces_old_after_its_uses_end(), 20))


async def _test_new_version_replaces_old_after_its_uses_end():
    pool, engine, unloads = make_pool()
    seen: list[str] = []
    old_started = asyncio.Event()

    async def old_request() -> None:
        async with pool.use(v("/old", 1)):
            old_started.set()
            await asyncio.sleep(0.05)
            seen.append(engine["x"])  # still the old weights while its request runs

    async def new_request() -> None:
        await old_started.wait()
        async with pool.use(v("/new", 2)):
            seen.append(engine["x"])

    await asyncio.gather(old_request(), new_request())
    assert seen == ["/old", "/new"]
    assert unloads == ["x"]
    assert pool.snapshot()["versions"] == {"x": 2}


def test_stale_request_uses_the_newest_version_seen():
    asyncio.run(asyncio.wait_for(_test_stale_request_uses_the_newest_version_seen(), 20))


async def _test_stale_request_uses_the_newest_version_seen():
    pool, engine, _ = make_pool()
    async with pool.use(v("/new", 2)):
        pass
    async with pool.use(v("/old", 1)):
        assert engine["x"] == "/new"
    assert pool.loads == 1


def test_follower_eviction_spares_a_newer_resident():
    asyncio.run(asyncio.wait_for(_test_follower_eviction_spares_a_newer_resident(), 20))


async def _test_follower_eviction_spares_a_newer_resident():
    pool, engine, _ = make_pool()
    await pool.ensure(v("/new", 3))
    assert await pool.evict("x", older_than=3) is False
    assert engine == {"x": "/new"}
    assert await pool.evict("x", older_than=4) is True
    assert engine == {}


def test_a_failed_source_is_remembered_until_its_ttl_or_a_new_version():
    async def scenario():
        PREPARES.clear()
        pool, engine, _ = make_pool(failure_ttl_s=0.2)
        for _ in range(3):
            with pytest.raises(AdapterSourceError, match="does not exist"):
                await pool.ensure(v("/missing", 1))
        assert PREPARES == ["/missing"]  # fetched once, not three times
        await pool.ensure(v("/fixed", 2))  # a re-registration is tried at once
        assert engine == {"x": "/fixed"}
        await pool.evict("x")
        with pytest.raises(AdapterSourceError):
            await pool.ensure(v("/missing-again", 3))
        await asyncio.sleep(0.25)
        with pytest.raises(AdapterSourceError):
            await pool.ensure(v("/missing-again", 3))
        assert PREPARES == ["/missing", "/fixed", "/missing-again", "/missing-again"]

    asyncio.run(asyncio.wait_for(scenario(), 20))
