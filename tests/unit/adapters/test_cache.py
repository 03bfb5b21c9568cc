"""DiskCache checks itself and is shared safely: damaged entries are dropped (so they are fetched
again), the budget holds across processes, and no process removes another's download."""

import multiprocessing
import os

import pytest

from adapters.disk_cache import DiskCache


def put(cache: DiskCache, key: str, data: bytes) -> "os.PathLike":
    tmp = cache.new_tmp()
    (tmp / "adapter_model.safetensors").write_bytes(data)
    return cache.commit(key, tmp)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda f: f.write_bytes(f.read_bytes()[:10]), "has 10 bytes"),  # truncated
        (lambda f: f.write_bytes(b"Y" + f.read_bytes()[1:]), "does not match its sha256"),
        (lambda f: f.unlink(), "is missing"),
        (lambda f: __import__("shutil").rmtree(f.parent), "is missing"),  # entry dir gone
    ],
)
def test_a_damaged_entry_is_dropped_so_it_is_fetched_again(tmp_path, caplog, damage, why):
    cache = DiskCache(tmp_path, max_bytes=10_000)
    entry = put(cache, "k", b"X" * 100)
    assert cache.lookup("k") == entry
    damage(entry / "adapter_model.safetensors")
    caplog.set_level("WARNING", logger="adapters.disk_cache")
    assert cache.lookup("k") is None
    assert why in caplog.text
    assert cache.total_bytes == 0
    again = put(cache, "k", b"X" * 100)  # the caller's re-fetch
    assert cache.lookup("k") == again


def test_an_untouched_entry_is_not_hashed_again(tmp_path, monkeypatch):
    cache = DiskCache(tmp_path, max_bytes=10_000)
    put(cache, "k", b"X" * 100)
    monkeypatch.setattr("adapters.disk_cache.file_sha256", lambda p: pytest.fail("hashed on a hit"))
    assert cache.lookup("k") is not None


def _fill(root: str, worker: int) -> None:
    cache = DiskCache(root, max_bytes=2500)
    for i in range(6):
        put(cache, f"w{worker}-{i}", b"Z" * 1000)


def test_the_budget_holds_across_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fill, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = DiskCache(tmp_path, max_bytes=2500)
    assert 0 < cache.total_bytes <= 2500
    on_disk = sum(f.stat().st_size for f in (tmp_path / "entries").rglob("*") if f.is_file())
    assert on_disk == cache.total_bytes
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_starting_cache_keeps_another_process_download(tmp_path):
    first = DiskCache(tmp_path, max_bytes=10_000)
    downloading = first.new_tmp()
    (downloading / "part").write_bytes(b"half")
    DiskCache(tmp_path, max_bytes=10_000)  # another replica starts on this node
    assert (downloading / "part").read_bytes() == b"half"
    assert first.commit("k", downloading).exists()
