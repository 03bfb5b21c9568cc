"""The durable half of the adapter registry: adapters per base in one SQLite file.

Every write is one ``BEGIN IMMEDIATE`` transaction (check and change together), so concurrent
writers (threads of one registry replica, or an old and a new replica during a redeploy) are
serialised by SQLite's file lock: one registration of a name wins, the others see it exists.
Each write increments one counter, the catalogue version; an added or replaced adapter takes the
new counter value as its own ``version``, so versions are never reused, even across restarts.

Config-declared adapters are merged by ``apply_config``: an entry is written when it is new or
differs from what the config said the last time it was applied; otherwise the stored state wins
(runtime pins, deletions and replacements survive restarts and redeploys). An adapter that came
from config and is no longer declared there is removed.

NOTE: SQLite's locking needs a local filesystem (or one with working POSIX locks); on a cluster,
give the registry a path on such shared storage (see docs/RELIABILITY.md).
"""

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from adapters.errors import AdapterExistsError, unknown_model
from adapters.spec import AdapterSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS adapters (
    base TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, version INTEGER NOT NULL,
    origin TEXT NOT NULL, PRIMARY KEY (base, name));
CREATE TABLE IF NOT EXISTS applied_config (
    base TEXT NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (base, name));
INSERT OR IGNORE INTO meta VALUES ('version', 0);
"""

# What identifies an adapter's weights in config: a change here is a new registration.
_IDENTITY = ("source", "kind", "revision", "weight_name", "sha256", "pinned")


def _digest(spec: AdapterSpec) -> str:
    data = spec.model_dump(mode="json", include=set(_IDENTITY))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class CatalogStore:
    """Adapters per base, durable in ``path`` (created with its directory if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            # NOTE: the rollback journal, not WAL: WAL needs shared memory, which a shared
            # filesystem across hosts (a cluster's state_dir) does not give.
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One serialised read-modify-write transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        return self._version(db)

    @staticmethod
    def _version(db: sqlite3.Connection) -> int:
        return db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]

    def version(self) -> int:
        """The catalogue version: cheap, for pollers."""
        with self._lock:
            return self._version(self._db)

    def load(self) -> tuple[int, dict[str, dict[str, AdapterSpec]]]:
        """(catalogue version, base -> name -> spec), read in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                version = self._version(self._db)
                rows = self._db.execute("SELECT base, name, spec FROM adapters").fetchall()
            finally:
                self._db.execute("COMMIT")
        out: dict[str, dict[str, AdapterSpec]] = {}
        for base, name, spec in sorted(rows):
            out.setdefault(base, {})[name] = AdapterSpec.model_validate_json(spec)
        return version, out

    def add(self, spec: AdapterSpec, origin: str = "api") -> AdapterSpec:
        """Register ``spec`` under ``spec.base``; AdapterExistsError if the name is taken.

        Returns the stored spec, carrying its new version.
        """
        with self._write() as db:
            if self._get(db, spec.base, spec.name) is not None:
                raise AdapterExistsError(f"adapter '{spec.base}:{spec.name}' is already registered")
            return self._put(db, spec, origin)

    def remove(self, base: str, name: str) -> int:
        """Delete ``base:name``; returns the new catalogue version."""
        with self._write() as db:
            if self._get(db, base, name) is None:
                raise unknown_model(f"{base}:{name}")
            db.execute("DELETE FROM adapters WHERE base = ? AND name = ?", (base, name))
            return self._bump(db)

    def set_pinned(self, base: str, name: str, pinned: bool) -> int:
        """Change the pin flag (not the adapter's version); returns the new catalogue version."""
        with self._write() as db:
            spec = self._get(db, base, name)
            if spec is None:
                raise unknown_model(f"{base}:{name}")
            updated = spec.model_copy(update={"pinned": pinned})
            db.execute(
                "UPDATE adapters SET spec = ? WHERE base = ? AND name = ?",
                (updated.model_dump_json(), base, name),
            )
            return self._bump(db)

    def apply_config(self, declared: Mapping[str, Sequence[AdapterSpec]]) -> int:
        """Merge the config's adapters (base -> specs) as the module docstring says; always
        bumps the catalogue version (the bases themselves may have changed)."""
        with self._write() as db:
            applied = {
                (b, n): d for b, n, d in db.execute("SELECT base, name, digest FROM applied_config")
            }
            wanted = {(s.base, s.name): s for specs in declared.values() for s in specs}
            for key, spec in wanted.items():
                digest = _digest(spec)
                if applied.get(key) == digest:
                    continue  # unchanged in config since last applied: the stored state wins
                self._put(db, spec, "config")
                db.execute("INSERT OR REPLACE INTO applied_config VALUES (?, ?, ?)", (*key, digest))
            for key in set(applied) - set(wanted):
                db.execute("DELETE FROM applied_config WHERE base = ? AND name = ?", key)
                db.execute(
                    "DELETE FROM adapters WHERE base = ? AND name = ? AND origin = 'config'", key
                )
            return self._bump(db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _get(self, db: sqlite3.Connection, base: str | None, name: str) -> AdapterSpec | None:
        row = db.execute(
            "SELECT spec FROM adapters WHERE base = ? AND name = ?", (base, name)
        ).fetchone()
        return AdapterSpec.model_validate_json(row[0]) if row else None

    def _put(self, db: sqlite3.Connection, spec: AdapterSpec, origin: str) -> AdapterSpec:
        version = self._bump(db)
        stored = spec.model_copy(update={"version": version})
        db.execute(
            "INSERT OR REPLACE INTO adapters VALUES (?, ?, ?, ?, ?)",
            (spec.base, spec.name, stored.model_dump_json(), version, origin),
        )
        return stored
