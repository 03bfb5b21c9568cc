"""AdapterCache: budgets, pinning, use-refs, and what LFU with history keeps that LRU loses."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.adapter_cache import AdapterCache
from adapters.errors import AdapterCapacityError

KEYS = [f"a{i}" for i in range(8)]

op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.integers(0, 60)),
    st.tuples(st.just("touch"), st.sampled_from(KEYS)),
    st.tuples(st.just("pin"), st.sampled_from(KEYS)),
    st.tuples(st.just("unpin"), st.sampled_from(KEYS)),
    st.tuples(st.just("acquire"), st.sampled_from(KEYS)),
    st.tuples(st.just("release"), st.sampled_from(KEYS)),
    st.tuples(st.just("remove"), st.sampled_from(KEYS)),
    st.tuples(st.just("remove_oldest")),
)


@settings(max_examples=300, deadline=None)
@given(
    max_count=st.integers(1, 5),
    max_bytes=st.none() | st.integers(0, 150),
    policy=st.sampled_from(["lru", "lfu"]),
    ops=st.lists(op, max_size=80),
)
def test_random_operations_keep_every_invariant(max_count, max_bytes, policy, ops):
    cache: AdapterCache[str] = AdapterCache(max_count, max_bytes, policy, decay_every=7)
    pinned: set[str] = set()
    refs: dict[str, int] = {}
    for o in ops:
        name, key = o[0], o[1] if len(o) > 1 else None
        before = set(cache.keys())
        if name == "put":
            size = o[2]
            held = {k for k in before if k in pinned or refs.get(k)} - {key}
            held_bytes = sum(cache.size_of(k) for k in held)
            can_fit = len(held) + 1 <= max_count and (
                max_bytes is None or held_bytes + size <= max_bytes
            )
            try:
                evicted = cache.put(key, f"v-{key}", size)
            except AdapterCapacityError as e:
                assert not can_fit, "refused although enough was evictable"
                assert key in str(e)
                assert set(cache.keys()) == before, "a refused put changed the cache"
                continue
            assert can_fit
            assert set(evicted) == before - set(cache.keys()), "put must report its evictions"
            assert not set(evicted) & held, "evicted a pinned or in-use entry"
            assert key in cache and cache.peek(key) == f"v-{key}"
        elif name == "remove_oldest":
            gone = cache.remove_oldest()
            if gone is not None:
                assert gone not in pinned and not refs.get(gone)
                assert set(cache.keys()) == before - {gone}
            else:
                assert all(k in pinned or refs.get(k) for k in before)
        elif name == "touch":
            assert cache.touch(key) == (key in before)
        elif key not in cache:
            if name == "remove":
                with pytest.raises(KeyError):
                    cache.remove(key)
            continue
        elif name == "pin":
            cache.pin(key)
            pinned.add(key)
        elif name == "unpin":
            cache.unpin(key)
            pinned.discard(key)
        elif name == "acquire":
            cache.acquire(key)
            refs[key] = refs.get(key, 0) + 1
        elif name == "release" and refs.get(key):
            cache.release(key)
            refs[key] -= 1
        elif name == "remove":
            cache.remove(key)
            pinned.discard(key)
            refs.pop(key, None)
        # Invariants after every operation.
        assert len(cache) <= max_count
        assert cache.total_bytes == sum(cache.size_of(k) for k in cache.keys())
        if max_bytes is not None:
            assert cache.total_bytes <= max_bytes
        assert set(cache.pinned()) == pinned & set(cache.keys())
        for k in pinned | {k for k, n in refs.items() if n}:
            assert k in cache, f"{k} was pinned or in use and is gone"
        # Forget pins/refs of entries that are gone (they can only go through remove()).
        pinned &= set(cache.keys())
        refs = {k: n for k, n in refs.items() if k in cache}


def test_lru_evicts_least_recently_used_and_skips_pinned_and_in_use():
    cache: AdapterCache[int] = AdapterCache(3)
    for k in "abc":
        cache.put(k, 0, 1)
    cache.touch("a")  # order now b, c, a
    assert cache.put("d", 0, 1) == ["b"]
    cache.pin("c")
    cache.acquire("a")
    assert cache.put("e", 0, 1) == ["d"]
    cache.acquire("e")
    with pytest.raises(AdapterCapacityError, match="pinned or in use"):
        cache.put("f", 0, 1)
    cache.release("a")
    assert cache.put("f", 0, 1) == ["a"]
    assert sorted(cache.keys()) == ["c", "e", "f"]


def test_byte_budget_evicts_as_many_as_needed_and_refuses_what_never_fits():
    cache: AdapterCache[int] = AdapterCache(10, max_bytes=100)
    for k in "abcd":
        cache.put(k, 0, 25)
    assert cache.put("big", 0, 60) == ["a", "b", "c"]
    assert cache.total_bytes == 85
    assert cache.victims_for(101) is None
    with pytest.raises(AdapterCapacityError):
        cache.put("huge", 0, 101)
    assert cache.total_bytes == 85


def test_victims_for_can_ignore_in_use_but_not_pins():
    cache: AdapterCache[int] = AdapterCache(2)
    cache.put("a", 0, 1)
    cache.put("b", 0, 1)
    cache.acquire("a")
    cache.pin("b")
    assert cache.victims_for(1, "c") is None
    assert cache.victims_for(1, "c", ignore_in_use=True) == ["a"]
    cache.pin("a")
    assert cache.victims_for(1, "c", ignore_in_use=True) is None


def _serve(cache: AdapterCache[int], key: str) -> None:
    """What the pool does per request: record the access, load on a miss."""
    if not cache.touch(key):
        cache.put(key, 0, 1)


@pytest.mark.parametrize("policy, survives", [("lru", False), ("lfu", True)])
def test_hot_adapter_through_a_burst_of_one_offs(policy, survives):
    cache: AdapterCache[int] = AdapterCache(4, policy=policy)
    for _ in range(10):
        _serve(cache, "hot")
    for i in range(20):
        _serve(cache, f"one-off-{i}")
    assert ("hot" in cache) is survives


def test_lfu_remembers_a_popular_adapter_after_it_was_evicted():
    cache: AdapterCache[int] = AdapterCache(2, policy="lfu", decay_every=1000)
    for _ in range(10):
        _serve(cache, "hot")
    cache.remove("hot")  # e.g. deleted and re-registered, or evicted while everything was busy
    for i in range(5):
        _serve(cache, f"one-off-{i}")
    _serve(cache, "hot")  # comes back: its count came with it
    for i in range(5, 15):
        _serve(cache, f"one-off-{i}")
    assert "hot" in cache


def test_lfu_counts_age_so_a_formerly_hot_adapter_can_go():
    cache: AdapterCache[int] = AdapterCache(2, policy="lfu", decay_every=4)
    for _ in range(8):
        _serve(cache, "old-hot")
    for _ in range(40):
        _serve(cache, "new")  # after enough halvings old-hot's count is 0
    assert cache.frequency("old-hot") == 0
    _serve(cache, "x")
    _serve(cache, "x")
    _serve(cache, "y")
    assert "old-hot" not in cache


def test_lfu_history_is_bounded():
    cache: AdapterCache[int] = AdapterCache(2, policy="lfu", history_size=3, decay_every=10**6)
    for i in range(50):
        cache.touch(f"ghost-{i}")
    assert sum(cache.frequency(f"ghost-{i}") > 0 for i in range(50)) == 3


def test_should_wait_only_under_lfu_for_a_rarer_adapter_in_use():
    for policy, expected in [("lfu", True), ("lru", False)]:
        c = AdapterCache(2, policy=policy)
        c.put("hot", 1, 0)
        for _ in range(5):
            c.touch("hot")
        c.put("rare", 2, 0)
        c.acquire("rare")
        c.touch("new")
        # Putting 'new' now would evict the popular 'hot'; the rarer 'rare' is only in use.
        assert c.should_wait("new", 0) is expected, policy
        c.release("rare")
        assert c.should_wait("new", 0) is False  # 'rare' is the victim now: no reason to wait


def test_should_wait_not_when_every_adapter_in_use_is_popular():
    c = AdapterCache(2, policy="lfu")
    for k in ("a", "b"):
        c.put(k, 0, 0)
        for _ in range(5):
            c.touch(k)
    c.acquire("b")
    assert c.should_wait("new", 0) is False  # waiting for 'b' would not help
