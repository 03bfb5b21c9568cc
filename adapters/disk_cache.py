"""The local disk cache of remote adapters: one directory per entry, a byte budget, LRU eviction.

Entries appear atomically (filled in a temp dir on the same filesystem, then ``os.rename``), so a
reader never sees a half-written adapter. The index is rebuilt from disk on start; LRU order then
follows directory mtimes. Thread-safe: fetches fill it from worker threads.
"""

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from adapters.adapter_cache import AdapterCache
from adapters.errors import AdapterCapacityError, AdapterSourceError

log = logging.getLogger("adapters.disk_cache")


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class DiskCache:
    """``key`` (any string naming a remote adapter version) -> a directory under ``root``."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root).expanduser()
        self._entries_dir = self.root / "entries"
        self._tmp_dir = self.root / "tmp"
        self._entries_dir.mkdir(parents=True, exist_ok=True)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lru: AdapterCache[Path] = AdapterCache(max_count=2**31, max_bytes=max_bytes)
        self._lock = threading.Lock()
        # Leftovers of a crash mid-download are never valid entries.
        for leftover in self._tmp_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        existing = sorted(self._entries_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for d in existing:
            try:
                self._evict_paths(self._lru.put(d.name, d, _tree_bytes(d)))
            except AdapterCapacityError:
                shutil.rmtree(d, ignore_errors=True)

    @property
    def total_bytes(self) -> int:
        return self._lru.total_bytes

    def _slot(self, key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:40]

    def lookup(self, key: str) -> Path | None:
        """The entry's directory if cached (and mark it recently used), else None."""
        slot = self._slot(key)
        with self._lock:
            path = self._lru.get(slot)
        if path is not None:
            os.utime(path)  # keeps LRU order across restarts
        return path

    def new_tmp(self) -> Path:
        """A fresh empty directory to download into, on the cache's filesystem."""
        return Path(tempfile.mkdtemp(dir=self._tmp_dir))

    def commit(self, key: str, tmp: Path) -> Path:
        """Move ``tmp`` into the cache as ``key`` atomically; evict LRU entries over the budget."""
        slot = self._slot(key)
        final = self._entries_dir / slot
        size = _tree_bytes(tmp)
        with self._lock:
            if slot in self._lru:  # a concurrent fetch of the same version won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            try:
                evicted = self._lru.put(slot, final, size)
            except AdapterCapacityError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise AdapterSourceError(
                    f"{key}: {size} bytes do not fit the disk cache budget "
                    f"({self._lru.max_bytes} bytes)"
                ) from None
            os.rename(tmp, final)
            self._evict_paths(evicted)
        log.info("cached %s (%d bytes) in %s", key, size, final)
        return final

    def _evict_paths(self, slots: list[str]) -> None:
        for slot in slots:
            shutil.rmtree(self._entries_dir / slot, ignore_errors=True)
            log.info("disk cache: evicted %s", slot)
