"""Keeps one model replica's pool in step with the registry: adapters deleted there are evicted
(really unloaded) here, an adapter replaced there (same name, higher version) is evicted here so
its old weights go, and pin flags set there are applied here. Polls the registry's versioned
snapshot, so an unchanged catalogue costs one tiny call per period.
NOTE: requests carry the version they were routed with, and the pool replaces an older resident
version before use, so a replacement is honoured even before this follower's next poll.
"""

import asyncio
import logging
from typing import Any

from adapters.catalog import Catalog
from adapters.errors import AdapterError
from adapters.spec import AdapterSpec

logger = logging.getLogger("serve_app.registry_sync")


class RegistryFollower:
    def __init__(self, registry: Any, base: str, pool: Any, period_s: float = 0.5) -> None:
        self.registry, self.base, self.pool, self.period_s = registry, base, pool, period_s
        self.version = 0
        self.specs: dict[str, AdapterSpec] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Follow in the background from now on (every ``period_s``)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # keep following: a registry restart must not stop this replica
                logger.exception("registry sync for %s failed", self.base)
            await asyncio.sleep(self.period_s)

    async def sync(self) -> None:
        snap: Catalog | None = await self.registry.snapshot.remote(self.version)
        if snap is None:
            return
        specs = snap.adapters(self.base)
        for name in set(self.specs) - set(specs):
            if await self.pool.evict(name):
                logger.info("adapter %s:%s deleted from the registry: evicted", self.base, name)
        for name, spec in specs.items():
            old = self.specs.get(name)
            if old is not None and old.version != spec.version:
                if await self.pool.evict(name, older_than=spec.version or 0):
                    logger.info(
                        "adapter %s:%s replaced in the registry (version %s -> %s): evicted",
                        self.base, name, old.version, spec.version,
                    )  # fmt: skip
                old = None
            if old is not None and old.pinned == spec.pinned:
                continue
            try:
                if spec.pinned:
                    await self.pool.pin(spec)
                elif old is not None and old.pinned:
                    await self.pool.unpin(name)
            except AdapterError as e:
                logger.warning("could not apply pin state of %s:%s: %s", self.base, name, e)
        self.specs, self.version = specs, snap.version
