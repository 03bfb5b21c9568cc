"""A bounded map from adapter name to value with pinning, use-refs, and a count and byte budget.

A boring data structure: no I/O, no asyncio, no locks (callers serialise). The pool uses it for the
replica working set, the disk cache for cached remote adapters.

Eviction policies (``policy``):

- ``"lru"``: evict the least recently used evictable entry first.
- ``"lfu"``: evict the entry with the lowest access frequency first, ties broken by recency (least
  recently used of the least frequent). Frequencies *age*: every ``decay_every`` recorded accesses,
  all counts are halved (integer division, counts that reach 0 are dropped), so yesterday's hot
  adapter does not stay forever. Accesses to keys that are NOT resident are counted too, in a
  bounded history of ``history_size`` non-resident keys (oldest-accessed dropped first); a key
  keeps its count there when evicted. This is the TinyLFU idea without its admission filter (a
  request needs its adapter whatever its count): a popular adapter that comes back after a burst
  of one-off adapters returns with its high count and outlives them, where LRU would have lost it.

Knobs: ``max_count`` (entries), ``max_bytes`` (sum of ``size_bytes``; None = no byte budget),
``decay_every`` (lfu; default ``max(16, 40 * max_count)``: four times TinyLFU's sample size
W = 10 x cache, since a replica sees only its share of the traffic, and at 10 x a moderately
popular adapter's count halves back to a newcomer's before it comes again; on a full fleet of
1,000 replicas, benchmarks/simulate loads 9% less with it, and beyond 40 x nothing changes),
``history_size`` (lfu; default ``max(16, 4 * max_count)``).

An entry is *evictable* unless it is pinned (``pin``/``unpin``, a flag) or in use (``acquire`` /
``release``, a count). Only ``remove`` takes out a pinned or in-use entry: that is the caller's
explicit decision. Accesses are recorded by ``touch`` and ``get``, never by ``peek`` or ``put``.
"""

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from adapters.errors import AdapterCapacityError

T = TypeVar("T")
Policy = Literal["lru", "lfu"]


@dataclass
class _Entry(Generic[T]):
    value: T
    size_bytes: int
    pinned: bool = False
    refs: int = 0


class AdapterCache(Generic[T]):
    def __init__(
        self,
        max_count: int,
        max_bytes: int | None = None,
        policy: Policy = "lru",
        *,
        decay_every: int | None = None,
        history_size: int | None = None,
    ) -> None:
        if max_count < 1:
            raise ValueError("max_count must be >= 1")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        if policy not in ("lru", "lfu"):
            raise ValueError(f"unknown eviction policy {policy!r} (use 'lru' or 'lfu')")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.policy: Policy = policy
        self.decay_every = decay_every or max(16, 40 * max_count)
        self.history_size = history_size if history_size is not None else max(16, 4 * max_count)
        # Iteration order is recency: first = least recently used.
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()
        self._bytes = 0
        # lfu only: access counts of resident keys, and of up to history_size others (the ghosts,
        # kept in recency order so the oldest ghost goes first).
        self._freq: dict[str, int] = {}
        self._ghosts: OrderedDict[str, None] = OrderedDict()
        self._accesses = 0

    # -- reading ---------------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def keys(self) -> list[str]:
        """Resident keys, least recently used first."""
        return list(self._entries)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def peek(self, key: str) -> T | None:
        """The value, without recording an access."""
        e = self._entries.get(key)
        return None if e is None else e.value

    def size_of(self, key: str) -> int:
        return self._entries[key].size_bytes

    def is_pinned(self, key: str) -> bool:
        e = self._entries.get(key)
        return e is not None and e.pinned

    def in_use(self, key: str) -> int:
        """How many holders currently use ``key`` (0 if absent)."""
        e = self._entries.get(key)
        return 0 if e is None else e.refs

    def pinned(self) -> list[str]:
        return [k for k, e in self._entries.items() if e.pinned]

    def frequency(self, key: str) -> int:
        """The aged access count (lfu; 0 under lru)."""
        return self._freq.get(key, 0)

    def eviction_order(self, *, ignore_in_use: bool = False) -> list[str]:
        """Evictable keys, first to go first (with ``ignore_in_use``: every unpinned key)."""
        keys = [
            k for k, e in self._entries.items() if not e.pinned and (ignore_in_use or e.refs == 0)
        ]
        if self.policy == "lfu":
            rank = {k: i for i, k in enumerate(self._entries)}  # recency position
            keys.sort(key=lambda k: (self._freq.get(k, 0), rank[k]))
        return keys

    # -- recording accesses ----------------------------------------------------------------------

    def touch(self, key: str) -> bool:
        """Record an access to ``key`` (resident or not); return whether it is resident."""
        resident = key in self._entries
        if resident:
            self._entries.move_to_end(key)
        if self.policy == "lfu":
            self._count(key, resident)
        return resident

    def get(self, key: str) -> T | None:
        """The value (None if absent), recording an access."""
        self.touch(key)
        return self.peek(key)

    def _count(self, key: str, resident: bool) -> None:
        self._freq[key] = self._freq.get(key, 0) + 1
        if not resident:
            self._ghosts[key] = None
            self._ghosts.move_to_end(key)
            self._trim_ghosts()
        self._accesses += 1
        if self._accesses >= self.decay_every:
            self._accesses = 0
            for k in list(self._freq):
                self._freq[k] //= 2
                if self._freq[k] == 0 and k not in self._entries:
                    del self._freq[k]
                    self._ghosts.pop(k, None)

    def _trim_ghosts(self) -> None:
        while len(self._ghosts) > self.history_size:
            k, _ = self._ghosts.popitem(last=False)
            self._freq.pop(k, None)

    # -- changing the resident set ---------------------------------------------------------------

    def victims_for(
        self, size_bytes: int, key: str | None = None, *, ignore_in_use: bool = False
    ) -> list[str] | None:
        """The keys ``put(key, _, size_bytes)`` would evict, or None if it cannot fit now.

        With ``ignore_in_use``, entries in use count as evictable: None then means the entry cannot
        fit until something is unpinned (or ever, if it exceeds ``max_bytes``).
        """
        count, total = len(self._entries), self._bytes
        if key is not None and key in self._entries:
            count, total = count - 1, total - self._entries[key].size_bytes
        if self.max_bytes is not None and size_bytes > self.max_bytes:
            return None
        order = self.eviction_order(ignore_in_use=ignore_in_use)
        victims: list[str] = []
        order = iter(k for k in order if k != key)
        while count + 1 > self.max_count or (
            self.max_bytes is not None and total + size_bytes > self.max_bytes
        ):
            k = next(order, None)
            if k is None:
                return None
            victims.append(k)
            count, total = count - 1, total - self._entries[k].size_bytes
        return victims

    def should_wait(self, key: str, size_bytes: int) -> bool:
        """lfu admission: True when putting ``key`` now would evict an adapter requested more
        often than ``key`` while one requested no more often is merely in use (it will be released
        soon, and is the better victim). Always False under lru, or when nothing must go.
        """
        if self.policy != "lfu":
            return False
        victims = self.victims_for(size_bytes, key)
        if not victims:
            return False
        f = self._freq.get(key, 0)
        if max(self._freq.get(v, 0) for v in victims) <= f:
            return False
        return any(
            e.refs and not e.pinned and self._freq.get(k, 0) <= f
            for k, e in self._entries.items()
            if k != key
        )

    def put(self, key: str, value: T, size_bytes: int) -> list[str]:
        """Insert or replace ``key``; evict what must go (in policy order) and return those keys.

        Raises AdapterCapacityError, changing nothing, if it cannot fit because every other entry
        is pinned or in use (or ``size_bytes`` exceeds ``max_bytes``). A replaced entry keeps its
        pin and use-refs.
        """
        if size_bytes < 0:
            raise ValueError("size_bytes must be >= 0")
        victims = self.victims_for(size_bytes, key)
        if victims is None:
            raise AdapterCapacityError(
                f"adapter '{key}' ({size_bytes} bytes) does not fit: the other "
                f"{len(self._entries)} resident adapters are pinned or in use "
                f"(budget {self.max_count} adapters, {self.max_bytes} bytes)"
            )
        for v in victims:
            self.remove(v)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size_bytes
        self._entries[key] = _Entry(value, size_bytes)
        if old is not None:
            self._entries[key].pinned, self._entries[key].refs = old.pinned, old.refs
        self._bytes += size_bytes
        if self.policy == "lfu":
            self._ghosts.pop(key, None)
            self._freq[key] = max(self._freq.get(key, 0), 1)
        return victims

    def remove(self, key: str) -> T:
        """Take ``key`` out whatever its pin or use-refs; its access count moves to the history."""
        e = self._entries.pop(key)
        self._bytes -= e.size_bytes
        if self.policy == "lfu" and key in self._freq:
            self._ghosts[key] = None
            self._trim_ghosts()
        return e.value

    def remove_oldest(self) -> str | None:
        """Evict the first evictable key in policy order; None if everything is pinned or in use."""
        order = self.eviction_order()
        if not order:
            return None
        self.remove(order[0])
        return order[0]

    def pin(self, key: str) -> None:
        self._entries[key].pinned = True

    def unpin(self, key: str) -> None:
        self._entries[key].pinned = False

    def acquire(self, key: str) -> None:
        """Mark one more holder of ``key``; it is not evicted until every holder releases it."""
        self._entries[key].refs += 1

    def release(self, key: str) -> None:
        e = self._entries.get(key)
        if e is None:
            return  # removed explicitly while in use
        if e.refs <= 0:
            raise RuntimeError(f"release of '{key}' without acquire")
        e.refs -= 1
