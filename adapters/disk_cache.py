"""The local disk cache of remote adapters: one directory per entry, a byte budget, LRU eviction,
shared safely by every process that points at the same directory (replicas on one node).

Layout under ``root``: ``entries/<slot>/`` (the files), ``manifests/<slot>.json`` (key, and per
file its size, mtime and sha256, recorded at fetch), ``tmp/<id>/`` (downloads in progress, each
guarded by an ``flock`` on ``tmp/<id>.lock`` held by its downloader) and ``lock`` (an ``flock``
that serialises commits and evictions across processes). An entry exists once its manifest
does: entries appear atomically (``os.rename`` of a finished download, then the manifest).

A hit is verified cheaply (each file's size and mtime against the manifest); on a mismatch the
file is hashed, and an entry whose bytes changed (truncated, bit flips) or vanished is dropped,
so the caller fetches it again. The byte budget is computed from the manifests on disk at each
commit, so it holds across processes; LRU order follows entry directory mtimes (a hit touches).
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from adapters.errors import AdapterSourceError

log = logging.getLogger("adapters.disk_cache")
ORPHAN_AGE_S = 60.0  # a tmp dir with no lock file this old belongs to no one


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DiskCache:
    """``key`` (any string naming a remote adapter version) -> a directory under ``root``."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes
        self._entries_dir = self.root / "entries"
        self._manifests = self.root / "manifests"
        self._tmp_dir = self.root / "tmp"
        for d in (self._entries_dir, self._manifests, self._tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()
        self._tmp_locks: dict[Path, int] = {}  # our downloads in progress -> locked fd
        self._keys: tuple[int, frozenset[str]] = (-1, frozenset())  # (manifests mtime, keys)
        with self._locked():
            self._drop_orphans()
            self._evict_for(0)  # a smaller budget than the last process's applies at once

    # -- public -----------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(m["bytes"] for m in self._all_manifests().values())

    def keys(self) -> frozenset[str]:
        """The keys of every entry on disk now (any process's), re-read only when an entry was
        added or removed since the last call (the manifests directory's mtime changed, or changed
        in the last second: its clock ticks coarser than two quick commits)."""
        try:
            mtime = self._manifests.stat().st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        if mtime != self._keys[0] or time.time_ns() - mtime < 1_000_000_000:
            keys = frozenset(m["key"] for m in self._all_manifests().values())
            self._keys = (mtime, keys)
        return self._keys[1]

    def touch(self, path: Path) -> None:
        """Mark the entry at ``path`` (a directory ``lookup``/``commit`` returned) recently used;
        a no-op for any other path, or an entry gone already."""
        path = Path(path)
        if path.parent == self._entries_dir:
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    def lookup(self, key: str) -> Path | None:
        """The entry's directory if cached and intact (marked recently used), else None.

        A damaged entry (a file missing, or bytes changed since the fetch) is removed and None
        returned, so the caller fetches it again.
        """
        slot = self._slot(key)
        manifest = self._read_manifest(slot)
        path = self._entries_dir / slot
        if manifest is None:
            return None
        problem = self._check(path, manifest)
        if problem is not None:
            log.warning("disk cache: %s is damaged (%s): dropped, to fetch again", key, problem)
            with self._locked():
                self._remove(slot)
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted by another process just now
            os.utime(path)
            return path
        return None

    def new_tmp(self) -> Path:
        """A fresh empty directory to download into, on the cache's filesystem; locked as ours
        until ``commit`` or ``discard``, so no other process's start-up cleanup removes it."""
        name = uuid.uuid4().hex
        fd = os.open(self._tmp_dir / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = self._tmp_dir / name
        path.mkdir()
        with self._thread_lock:
            self._tmp_locks[path] = fd
        return path

    def discard(self, tmp: Path) -> None:
        """Remove a download directory (a no-op after ``commit``)."""
        shutil.rmtree(tmp, ignore_errors=True)
        self._release_tmp(tmp)

    def commit(self, key: str, tmp: Path) -> Path:
        """Move ``tmp`` into the cache as ``key`` atomically, recording each file's hash; evict
        least recently used entries (of any process) to stay within the budget."""
        slot = self._slot(key)
        final = self._entries_dir / slot
        files = {
            p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file() and not p.is_symlink()
        }
        size = sum(f["size"] for f in files.values())
        try:
            if size > self.max_bytes:
                raise AdapterSourceError(
                    f"{key}: {size} bytes do not fit the disk cache budget ({self.max_bytes} bytes)"
                )
            with self._locked():
                if self._read_manifest(slot) is not None:  # another fetch of it won the race
                    return final
                shutil.rmtree(final, ignore_errors=True)  # a partial commit of a crashed process
                self._evict_for(size)
                os.rename(tmp, final)
                for name, f in files.items():
                    f["mtime_ns"] = (final / name).stat().st_mtime_ns
                self._write_manifest(slot, {"key": key, "bytes": size, "files": files})
        finally:
            self.discard(tmp)
        log.info("cached %s (%d bytes) in %s", key, size, final)
        return final

    # -- internals --------------------------------------------------------------------------------

    def _slot(self, key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:40]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Index changes, serialised across threads and processes."""
        with self._thread_lock, open(self.root / "lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _check(self, path: Path, manifest: dict) -> str | None:
        """None if intact; else what is wrong. Hashes only files whose size or mtime changed."""
        for name, f in manifest["files"].items():
            p = path / name
            try:
                st = p.stat()
            except FileNotFoundError:
                return f"{name} is missing"
            if st.st_size != f["size"]:
                return f"{name} has {st.st_size} bytes, {f['size']} were fetched"
            if st.st_mtime_ns != f.get("mtime_ns") and file_sha256(p) != f["sha256"]:
                return f"{name} does not match its sha256"
        return None

    def _read_manifest(self, slot: str) -> dict | None:
        try:
            return json.loads((self._manifests / f"{slot}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_manifest(self, slot: str, data: dict) -> None:
        tmp = self._manifests / f".{slot}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._manifests / f"{slot}.json")

    def _all_manifests(self) -> dict[str, dict]:
        out = {}
        for p in self._manifests.glob("*.json"):
            m = self._read_manifest(p.stem)
            if m is not None:
                out[p.stem] = m
        return out

    def _remove(self, slot: str) -> None:
        """Caller holds the lock. Manifest first: the entry stops existing before its files go."""
        with contextlib.suppress(FileNotFoundError):
            (self._manifests / f"{slot}.json").unlink()
        shutil.rmtree(self._entries_dir / slot, ignore_errors=True)

    def _evict_for(self, size: int) -> None:
        """Caller holds the lock: remove least recently used entries until ``size`` more fit."""
        manifests = self._all_manifests()
        total = sum(m["bytes"] for m in manifests.values())

        def last_used(slot: str) -> float:
            try:
                return (self._entries_dir / slot).stat().st_mtime
            except FileNotFoundError:
                return 0.0

        for slot in sorted(manifests, key=last_used):
            if total + size <= self.max_bytes:
                break
            self._remove(slot)
            total -= manifests[slot]["bytes"]
            log.info("disk cache: evicted %s (%s)", slot, manifests[slot]["key"])

    def _drop_orphans(self) -> None:
        """Caller holds the lock: partial commits, manifests without entries, and downloads
        whose process is gone (their lock file is free)."""
        slots = {p.stem for p in self._manifests.glob("*.json")}
        for d in self._entries_dir.iterdir():
            if d.name not in slots:
                shutil.rmtree(d, ignore_errors=True)
        for slot in slots:
            if not (self._entries_dir / slot).is_dir():
                self._remove(slot)
        for lock in self._tmp_dir.glob("*.lock"):
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live download
            finally:
                os.close(fd)
            shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
            lock.unlink(missing_ok=True)
        for d in self._tmp_dir.iterdir():
            unlocked = d.is_dir() and not d.with_suffix(".lock").exists()
            if unlocked and time.time() - d.stat().st_mtime > ORPHAN_AGE_S:
                shutil.rmtree(d, ignore_errors=True)

    def _release_tmp(self, tmp: Path) -> None:
        with self._thread_lock:
            fd = self._tmp_locks.pop(tmp, None)
        if fd is not None:
            tmp.with_suffix(".lock").unlink(missing_ok=True)
            os.close(fd)
