"""CatalogStore: registrations, pins and deletions survive reopening; config merge precedence;
one winner among concurrent registrations of a name; versions never reused or lost."""

import threading

import pytest

from adapters.errors import AdapterExistsError, UnknownModelError
from adapters.spec import AdapterSpec
from adapters.store import CatalogStore


def spec(name: str, source: str = "/tmp/a", **kw) -> AdapterSpec:
    return AdapterSpec(name=name, source=source, base="b", **kw)


def adapters(store: CatalogStore) -> dict[str, AdapterSpec]:
    return store.load()[1].get("b", {})


def test_runtime_changes_survive_reopening(tmp_path):
    path = tmp_path / "state" / "catalog.sqlite3"
    store = CatalogStore(path)
    store.apply_config({"b": [spec("cfg"), spec("cfg2")]})
    added = store.add(spec("rt", "/tmp/rt"))
    store.set_pinned("b", "cfg", True)
    store.remove("b", "cfg2")
    version = store.version()
    store.close()

    again = CatalogStore(path)
    again.apply_config({"b": [spec("cfg"), spec("cfg2")]})  # same config: stored state wins
    got = adapters(again)
    assert sorted(got) == ["cfg", "rt"]
    assert got["cfg"].pinned is True
    assert got["rt"].source == "/tmp/rt" and got["rt"].version == added.version
    assert again.version() > version


def test_changed_config_entry_wins_and_removed_config_entry_goes(tmp_path):
    store = CatalogStore(tmp_path / "c.db")
    store.apply_config({"b": [spec("a", "/tmp/one"), spec("gone")]})
    store.add(spec("rt"))
    first = adapters(store)["a"].version
    store.apply_config({"b": [spec("a", "/tmp/two")]})
    got = adapters(store)
    assert got["a"].source == "/tmp/two" and got["a"].version > first
    assert sorted(got) == ["a", "rt"]  # 'gone' left the config; the runtime one stays


def test_replacement_gets_a_higher_version(tmp_path):
    store = CatalogStore(tmp_path / "c.db")
    v1 = store.add(spec("x", "/tmp/one")).version
    store.remove("b", "x")
    v2 = store.add(spec("x", "/tmp/two")).version
    assert v2 > v1


def test_errors(tmp_path):
    store = CatalogStore(tmp_path / "c.db")
    store.add(spec("x"))
    with pytest.raises(AdapterExistsError, match="'b:x' is already registered"):
        store.add(spec("x"))
    with pytest.raises(UnknownModelError, match="The model 'b:nope' does not exist."):
        store.remove("b", "nope")
    with pytest.raises(UnknownModelError):
        store.set_pinned("b", "nope", True)


def test_concurrent_registrations_one_winner_no_lost_versions(tmp_path):
    """Two stores on one file (like an old and a new registry replica) and many threads."""
    stores = [CatalogStore(tmp_path / "c.db") for _ in range(2)]
    start = stores[0].version()
    results: list[str] = []
    barrier = threading.Barrier(20)

    def register(i: int) -> None:
        barrier.wait()
        try:
            stores[i % 2].add(spec("same", f"/tmp/{i}"))
            results.append("201")
        except AdapterExistsError:
            results.append("409")
        stores[i % 2].add(spec(f"own-{i}"))

    threads = [threading.Thread(target=register, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["201"] + ["409"] * 19
    assert stores[1].version() == start + 21  # one increment per successful write, none lost
    assert len(adapters(stores[0])) == 21
