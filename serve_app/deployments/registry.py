"""The adapter registry: which adapters each base serves, from config and from the admin API.

One replica serves the catalogue; ingresses and model replicas poll ``snapshot`` (cheap,
versioned) so a registered adapter is servable at once and a deleted one is unloaded everywhere.
The adapters are durable in a SQLite file under ``state_dir`` (adapters/store.py): runtime
registrations, pins and deletions survive a registry restart, an application restart and a
redeploy. The bases (kind, weights) come from the config of the running application.
It also keeps the model replicas' demand reports (routing/demand.py), which a replica that starts
reads to warm its working set (deployments/warming.py).
"""

import logging
import threading
from pathlib import Path
from typing import Any

from ray import serve

from adapters.catalog import BaseEntry, Catalog
from adapters.spec import AdapterKind, AdapterSpec
from adapters.store import CatalogStore
from serve_app.deployments.logs import to_replica_log
from serve_app.routing.demand import DemandBook

logger = logging.getLogger("serve_app.registry")
STORE_FILE = "catalog.sqlite3"


# Polled by every ingress and model replica: no access log line per poll.
@serve.deployment(
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
    logging_config={"enable_access_log": False},
)
class AdapterRegistry:
    def __init__(self, bases: dict[str, dict[str, Any]], state_dir: str) -> None:
        """``bases``: base id -> {"kind": "text"|"image", "root": model ref, "adapters": [spec]};
        ``state_dir``: where the catalogue file lives (shared storage on a cluster)."""
        to_replica_log()
        self.store = CatalogStore(Path(state_dir).expanduser() / STORE_FILE)
        self._bases = {b: (AdapterKind(v["kind"]), v["root"]) for b, v in bases.items()}
        self._shape = Catalog(
            bases={b: BaseEntry(kind=k, root=r) for b, (k, r) in self._bases.items()}
        )
        declared = {
            b: [AdapterSpec.model_validate(s) for s in v["adapters"]] for b, v in bases.items()
        }
        version = self.store.apply_config(declared)
        self._lock = threading.Lock()  # NOTE: sync methods run in Serve's thread pool
        self._catalog = Catalog()
        self._demand: dict[str, DemandBook] = {}
        logger.info("adapter catalogue at %s (version %d)", self.store.path, version)

    def snapshot(self, known_version: int = 0) -> Catalog | None:
        """The whole catalogue, or None if the caller's version is current."""
        version = self.store.version()
        if known_version == version:
            return None
        with self._lock:
            if self._catalog.version != version:
                self._catalog = self._read()
            return self._catalog

    def add(self, spec: dict[str, Any]) -> AdapterSpec:
        """Register; returns the stored spec with its version. AdapterExistsError if taken."""
        s = AdapterSpec.model_validate(spec)
        self._shape.base(s.base)  # an unknown base: 404
        stored = self.store.add(s)
        logger.info(
            "registered adapter %s:%s from %s (version %d)",
            s.base,
            s.name,
            s.source,
            stored.version,
        )
        return stored

    def remove(self, base: str, name: str) -> int:
        version = self.store.remove(base, name)
        logger.info("deleted adapter %s:%s", base, name)
        return version

    def set_pinned(self, base: str, name: str, pinned: bool) -> int:
        version = self.store.set_pinned(base, name, pinned)
        logger.info("%s adapter %s:%s", "pinned" if pinned else "unpinned", base, name)
        return version

    # NOTE: async, so they run on the replica's event loop, one at a time: no lock for the books.
    async def report_demand(
        self, base: str, replica: str, counts: dict[str, float], held: list[str]
    ) -> None:
        """One model replica's recent requests per adapter and the adapters it holds."""
        self._demand.setdefault(base, DemandBook()).report(replica, counts, held)

    async def warm_set(
        self, base: str, k: int, replica: str = "", hot_factor: float = 1.0
    ) -> list[str]:
        """The adapters ``replica``, joining ``base``'s replicas, should load first (at most k)."""
        book = self._demand.get(base)
        return book.warm_set(k, joining=replica, hot_factor=hot_factor) if book else []

    def _read(self) -> Catalog:
        """The store's adapters for the configured bases (others are kept, not served)."""
        version, stored = self.store.load()
        return Catalog(
            version=version,
            bases={
                b: BaseEntry(kind=kind, root=root, adapters=stored.get(b, {}))
                for b, (kind, root) in self._bases.items()
            },
        )
