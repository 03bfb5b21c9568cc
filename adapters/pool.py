"""The per-replica working set: which adapters are loaded in the engine, and their lifecycle.

``AdapterPool`` drives resolve -> fetch -> validate -> load -> ready, evicts (really unloading from
the engine) when the count or byte budget is full, and never evicts a pinned or in-use adapter.
The engine is reached only through the injected ``prepare`` / ``load`` / ``unload`` callables.
"""

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any, Protocol

from adapters.adapter_cache import AdapterCache, Policy
from adapters.errors import (
    AdapterCapacityError,
    AdapterError,
    AdapterLoadError,
    AdapterSourceError,
    AdapterUnavailableError,
    InvalidAdapterError,
)
from adapters.spec import AdapterSpec

log = logging.getLogger("adapters.pool")


class AdapterState(StrEnum):
    RESOLVING = "resolving"  # fetching and validating (``prepare``)
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    EVICTED = "evicted"


_IN_PROGRESS = (
    AdapterState.RESOLVING,
    AdapterState.LOADING,
)


class Prepared(Protocol):
    """What ``prepare`` returns (e.g. ``ValidatedAdapter``): anything with its weight bytes."""

    size_bytes: int


class AdapterPool:
    """Keeps at most ``max_count`` adapters (and ``max_bytes`` of weights) loaded in one engine.

    ``prepare(spec)`` fetches and validates; ``load(spec, prepared)`` puts the adapter into the
    engine; ``unload(name)`` takes it out and returns its memory. ``on_event`` sees
    every state transition. Waiting for room is bounded by ``capacity_timeout_s``. Under ``lfu``,
    with ``admission_wait_s`` > 0, a load that would evict an adapter requested more often than
    itself first waits (at most that long) for a less requested adapter that is in use to be
    released. Off by default: on routing_real (32 rank-64 adapters over 3 replicas x 4 slots) the
    0.1 s wait it had saved no loads (ours 325-342 per 1,000 with it, 333-339 without) and made
    cold requests ~0.1 s slower than the built-in router's (p50 984 vs 868 ms; without: equal).

    NOTE: one ``asyncio.Lock`` per adapter id serialises load and evict of that id; a load runs as
    a task shared by every request that waits for it (so it finishes, and its error reaches all of
    them, even if the request that started it goes away). Loads of different ids run in parallel.

    Versions: a spec's ``version`` (set by the registry) names one registration of the name. A
    request for a higher version than the resident one waits for the old weights' uses to end,
    unloads them and loads the new ones; a request for a lower version (a stale catalogue) uses
    the newest spec this pool has seen for the name. So once a replacement reaches a replica, the
    replaced weights serve no new request there.

    A load that fails because of the adapter or its source (missing, hanging, invalid, refused by
    the engine) is remembered for ``failure_ttl_s``: requests for that version in that time get
    the same error at once, so a broken source is not fetched again on every request.
    """

    def __init__(
        self,
        *,
        prepare: Callable[[AdapterSpec], Awaitable[Prepared]],
        load: Callable[[AdapterSpec, Prepared], Awaitable[None]],
        unload: Callable[[str], Awaitable[None]],
        max_count: int,
        max_bytes: int | None = None,
        policy: Policy = "lru",
        on_event: Callable[[str, AdapterState, dict], None] | None = None,
        name: str = "",
        capacity_timeout_s: float = 30.0,
        admission_wait_s: float = 0.0,
        failure_ttl_s: float = 10.0,
    ) -> None:
        self._prepare, self._load_cb, self._unload_cb = prepare, load, unload
        self._on_event = on_event
        self.name = name
        self.capacity_timeout_s = capacity_timeout_s
        self.admission_wait_s = admission_wait_s
        self.failure_ttl_s = failure_ttl_s
        self._failures: dict[str, tuple[int, float, AdapterError]] = {}  # (version, until, error)
        self._cache: AdapterCache[Prepared] = AdapterCache(max_count, max_bytes, policy)
        self._states: dict[str, AdapterState] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._unloading: dict[str, asyncio.Task[None]] = {}
        self._draining: set[str] = set()  # being evicted: no new uses
        self._waiting: dict[str, int] = {}  # requests awaiting a load of this id
        self._handed: dict[str, int] = {}  # holds a finished load left for those requests
        self._versions: dict[str, int] = {}  # version resident (or loading) per id
        self._newest: dict[str, AdapterSpec] = {}  # highest-version spec seen per id
        self._changed = asyncio.Event()  # replaced after each set(): "something was released"
        self.loads = self.evictions = self.hits = self.misses = 0

    # -- public API -------------------------------------------------------------------------------

    @asynccontextmanager
    async def use(self, spec: AdapterSpec) -> AsyncIterator[None]:
        """Make ``spec`` resident and hold it (never evicted) for the duration of the block."""
        await self._acquire(spec)
        try:
            yield
        finally:
            self._cache.release(spec.name)
            self._notify()

    async def ensure(self, spec: AdapterSpec) -> None:
        """Make ``spec`` resident (it may be evicted again at any time afterwards)."""
        async with self.use(spec):
            pass

    async def pin(self, spec: AdapterSpec) -> None:
        """Load ``spec`` if needed and keep it resident until ``unpin`` or ``evict``.

        Raises AdapterCapacityError when the other resident adapters are all pinned.
        """
        async with self.use(spec):
            self._cache.pin(spec.name)
        log.info("adapter %s: pinned%s", spec.name, self._tag())

    async def unpin(self, name: str) -> None:
        if name in self._cache:
            self._cache.unpin(name)
            log.info("adapter %s: unpinned%s", name, self._tag())
            self._notify()

    async def evict(self, name: str, older_than: int | None = None) -> bool:
        """Unload ``name`` now, pinned or not, once its in-flight uses have finished; with
        ``older_than``, only if the resident version is lower than that.

        Returns whether it was resident. New requests for it wait and then load it afresh.
        """
        async with self._lock(name):
            if name not in self._cache or (
                older_than is not None and self._versions.get(name, 0) >= older_than
            ):
                await self._unloaded(name)
                return False
            self._draining.add(name)
            try:
                while self._cache.in_use(name):
                    await self._wait_for_change(None)
            finally:
                self._draining.discard(name)
            if name in self._cache:  # NOTE: capacity eviction may have taken it meanwhile
                self._cache.remove(name)
                self._start_unload(name, "evict")
            await self._unloaded(name)
            return True

    def is_resident(self, name: str) -> bool:
        return self._ready(name)

    def resident(self) -> list[str]:
        return [n for n in self._cache.keys() if self._states.get(n) == AdapterState.READY]

    def snapshot(self) -> dict[str, Any]:
        """JSON-able view for health, routing and the admin API."""
        return {
            "resident": self.resident(),
            "loading": [n for n, s in self._states.items() if s in _IN_PROGRESS],
            "pinned": self._cache.pinned(),
            # Unpinned residents, first to be evicted first (lru or lfu order); one in use goes
            # once released. For routers: what a load here would cost.
            "eviction_order": self._cache.eviction_order(ignore_in_use=True),
            "capacity": self._cache.max_count,
            "max_bytes": self._cache.max_bytes,
            "resident_bytes": self._cache.total_bytes,
            "loads": self.loads,
            "evictions": self.evictions,
            "hits": self.hits,
            "misses": self.misses,
            "states": {n: s.value for n, s in self._states.items()},
            "versions": {n: self._versions.get(n) for n in self.resident()},
        }

    # -- internals --------------------------------------------------------------------------------

    def _tag(self) -> str:
        return f" [{self.name}]" if self.name else ""

    def _lock(self, name: str) -> asyncio.Lock:
        # Weak values: a lock lives while someone holds or awaits it, so ids don't pile up locks.
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _ready(self, name: str, version: int = 0) -> bool:
        return (
            name in self._cache
            and self._states.get(name) == AdapterState.READY
            and name not in self._draining
            and self._versions.get(name, 0) >= version
        )

    def _newest_spec(self, spec: AdapterSpec) -> AdapterSpec:
        known = self._newest.get(spec.name)
        if known is not None and (known.version or 0) > (spec.version or 0):
            return known
        self._newest[spec.name] = spec
        return spec

    def _set(self, name: str, state: AdapterState, **info: Any) -> None:
        old = self._states.get(name)
        self._states[name] = state
        log.info(
            "adapter %s: %s -> %s%s%s",
            name,
            old.value if old else "-",
            state.value,
            "".join(f" {k}={v}" for k, v in info.items()),
            self._tag(),
        )
        if self._on_event is not None:
            try:
                self._on_event(name, state, info)
            except Exception:
                log.exception("adapter %s: on_event callback failed", name)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self, deadline: float | None) -> bool:
        """Wait until something is released; False if ``deadline`` (loop time) passed first."""
        event = self._changed
        timeout = None if deadline is None else deadline - asyncio.get_running_loop().time()
        if timeout is not None and timeout <= 0:
            return False
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _acquire(self, spec: AdapterSpec) -> None:
        spec = self._newest_spec(spec)
        name, version = spec.name, spec.version or 0
        self._cache.touch(name)  # counts for lfu whether resident or not
        if self._ready(name, version):
            self.hits += 1
        else:
            self.misses += 1
        while not self._ready(name, version):
            if name in self._cache and self._versions.get(name, 0) < version:
                log.info("adapter %s: replaced by version %d%s", name, version, self._tag())
                await self.evict(name, older_than=version)
                continue
            task = self._inflight.get(name)
            if task is None:
                self._raise_recent_failure(name, version)
                task = asyncio.create_task(self._load(spec), name=f"load-adapter:{name}")
                self._inflight[name] = task
                task.add_done_callback(self._load_done)
            self._waiting[name] = self._waiting.get(name, 0) + 1
            try:
                # NOTE: shield: a request that goes away does not cancel a load others wait for.
                await asyncio.shield(task)
            except BaseException:
                if self._leave(name):  # cancelled after the load handed us a hold: give it back
                    self._cache.release(name)
                    self._notify()
                raise
            if self._leave(name):
                return  # the load left this request a hold: resident and not evictable
            # Loop: the load may have ended without making it ready (e.g. an eviction raced it).
        self._cache.acquire(name)

    def _raise_recent_failure(self, name: str, version: int) -> None:
        failed = self._failures.get(name)
        if failed is None:
            return
        failed_version, until, err = failed
        if failed_version != version or time.monotonic() >= until:
            del self._failures[name]
            return
        raise type(err)(f"{err} (remembered; tried again in {until - time.monotonic():.0f}s)")

    def _leave(self, name: str) -> bool:
        """A request stops waiting for ``name``'s load; True if the load left it a hold."""
        self._waiting[name] -= 1
        if not self._waiting[name]:
            del self._waiting[name]
        if self._handed.get(name):
            self._handed[name] -= 1
            if not self._handed[name]:
                del self._handed[name]
            return True
        return False

    def _load_done(self, task: asyncio.Task[None]) -> None:
        name = task.get_name().removeprefix("load-adapter:")
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # retrieved: waiters got it; don't warn if none is left

    async def _load(self, spec: AdapterSpec) -> None:
        name = spec.name
        async with self._lock(name):
            if name in self._cache:  # resident (_acquire replaces an older version first)
                return
            await self._unloaded(name)  # a previous eviction of this id must finish first
            self._versions[name] = spec.version or 0
            started = time.monotonic()
            self._set(name, AdapterState.RESOLVING, source=spec.source)
            placed = False
            try:
                prepared = await self._prepare(spec)
                placed = True  # NOTE: before the await: _place may be cancelled after its put
                await self._place(name, prepared)
                self._set(name, AdapterState.LOADING, size_bytes=prepared.size_bytes)
                await self._load_cb(spec, prepared)
            except BaseException as e:
                if placed and name in self._cache:
                    self._cache.remove(name)
                    self._notify()
                if isinstance(e, Exception):
                    err = _domain_error(name, e)
                    self._set(name, AdapterState.FAILED, error=str(err))
                    if isinstance(err, _REMEMBERED):
                        until = time.monotonic() + self.failure_ttl_s
                        self._failures[name] = (spec.version or 0, until, err)
                    if err is e:
                        raise
                    raise err from e
                self._set(name, AdapterState.FAILED, error=type(e).__name__)
                raise
            waiters = self._waiting.get(name, 0)
            if waiters:
                # NOTE: hand one hold to each waiting request in the same tick the load ends, so
                # no other load can evict the adapter before they resume (without this, loads
                # competing for the last slots evicted each other forever).
                for _ in range(waiters - 1):
                    self._cache.acquire(name)
                self._handed[name] = self._handed.get(name, 0) + waiters
            else:
                self._cache.release(name)
            if spec.pinned:
                self._cache.pin(name)
            self.loads += 1
            self._set(
                name,
                AdapterState.READY,
                size_bytes=prepared.size_bytes,
                load_s=round(time.monotonic() - started, 3),
            )
            self._notify()

    async def _place(self, name: str, prepared: Prepared) -> None:
        """Put ``prepared`` in the working set, held, evicting (and unloading) what must go.

        Waits while the adapters that would have to go are in use; fails at once if they are pinned.
        """
        cache, size = self._cache, prepared.size_bytes
        now = asyncio.get_running_loop().time()
        deadline = now + self.capacity_timeout_s
        admit_by = now + self.admission_wait_s
        while cache.should_wait(name, size) and await self._wait_for_change(admit_by):
            pass  # NOTE: lfu: a popular idle adapter outlives a rarely used one still in use
        while True:
            try:
                victims = cache.put(name, prepared, size)
                break
            except AdapterCapacityError:
                if cache.victims_for(size, name, ignore_in_use=True) is None:
                    raise AdapterCapacityError(self._full_message(name, size, "pinned")) from None
            log.info("adapter %s: working set full, waiting for a release%s", name, self._tag())
            if not await self._wait_for_change(deadline):
                raise AdapterCapacityError(
                    self._full_message(name, size, "pinned or in use")
                    + f" for {self.capacity_timeout_s:g}s"
                )
        cache.acquire(name)  # NOTE: same tick as put: not evictable while loading
        for v in victims:
            self._start_unload(v, "capacity")
        # NOTE: every unload in flight (ours, or an evict() that freed this room) finishes before
        # the newcomer loads, so the engine never holds more than the budget.
        await asyncio.gather(*(self._unloaded(v) for v in list(self._unloading)))

    def _full_message(self, name: str, size: int, why: str) -> str:
        budget = f"{self._cache.max_count} adapters"
        if self._cache.max_bytes is not None:
            budget += f", {self._cache.max_bytes} bytes"
            if size > self._cache.max_bytes:
                return f"adapter '{name}' ({size} bytes) is larger than the working set ({budget})"
        return f"adapter '{name}' does not fit: the working set ({budget}) is all {why} adapters"

    def _start_unload(self, name: str, reason: str) -> None:
        """Called once per removal from the cache, so ``unload`` runs exactly once per eviction."""
        self.evictions += 1
        self._unloading[name] = asyncio.create_task(
            self._unload(name, reason), name=f"unload-adapter:{name}"
        )

    async def _unload(self, name: str, reason: str) -> None:
        try:
            await self._unload_cb(name)
        except Exception:
            log.exception("adapter %s: unload failed%s", name, self._tag())
        finally:
            self._unloading.pop(name, None)
        self._set(name, AdapterState.EVICTED, reason=reason)

    async def _unloaded(self, name: str) -> None:
        task = self._unloading.get(name)
        if task is not None:
            await asyncio.shield(task)


# The adapter's own failures, worth remembering; server faults and a full working set are not.
_REMEMBERED = (AdapterSourceError, InvalidAdapterError, AdapterLoadError)


def _domain_error(name: str, e: Exception) -> AdapterError:
    """Domain errors pass; anything else is the server's fault (an engine or disk failing, out
    of memory), not the adapter's: engines raise AdapterLoadError for adapters they refuse."""
    if isinstance(e, AdapterError):
        return e
    return AdapterUnavailableError(
        f"adapter '{name}' failed to load (a server fault; retry later): {type(e).__name__}: {e}"
    )
