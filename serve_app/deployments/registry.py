"""The adapter registry: which adapters each base serves, from config and from the admin API.

One replica holds the catalogue; ingresses and model replicas poll ``snapshot`` (cheap, versioned)
so a registered adapter is servable at once and a deleted one is unloaded everywhere. The
catalogue lives in memory: adapters registered at runtime are lost when the application restarts
(config-declared ones come back).
"""

import logging
from typing import Any

from ray import serve

from adapters.errors import AdapterExistsError, UnknownModelError
from adapters.spec import AdapterSpec
from serve_app.deployments.logs import to_replica_log

logger = logging.getLogger("serve_app.registry")


# Polled by every ingress and model replica: no access log line per poll.
@serve.deployment(
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
    logging_config={"enable_access_log": False},
)
class AdapterRegistry:
    def __init__(self, bases: dict[str, dict[str, Any]]) -> None:
        """``bases``: base id -> {"kind": "text"|"image", "root": model ref, "adapters": [spec]}."""
        to_replica_log()
        self.version = 1
        self.bases = {
            base: {
                "kind": b["kind"],
                "root": b["root"],
                "adapters": {s["name"]: AdapterSpec.model_validate(s) for s in b["adapters"]},
            }
            for base, b in bases.items()
        }

    def snapshot(self, known_version: int = 0) -> dict[str, Any] | None:
        """The whole catalogue as JSON-able dicts, or None if the caller's version is current."""
        if known_version == self.version:
            return None
        return {
            "version": self.version,
            "bases": {
                base: {
                    "kind": b["kind"],
                    "root": b["root"],
                    "adapters": {n: s.model_dump(mode="json") for n, s in b["adapters"].items()},
                }
                for base, b in self.bases.items()
            },
        }

    def add(self, spec: dict[str, Any]) -> int:
        s = AdapterSpec.model_validate(spec)
        adapters = self._base(s.base)["adapters"]
        if s.name in adapters:
            raise AdapterExistsError(f"adapter '{s.base}:{s.name}' is already registered")
        adapters[s.name] = s
        logger.info("registered adapter %s:%s from %s", s.base, s.name, s.source)
        return self._bump()

    def remove(self, base: str, name: str) -> int:
        self.get(base, name)
        del self.bases[base]["adapters"][name]
        logger.info("deleted adapter %s:%s", base, name)
        return self._bump()

    def set_pinned(self, base: str, name: str, pinned: bool) -> int:
        spec = self.get(base, name)
        self.bases[base]["adapters"][name] = spec.model_copy(update={"pinned": pinned})
        logger.info("%s adapter %s:%s", "pinned" if pinned else "unpinned", base, name)
        return self._bump()

    def get(self, base: str, name: str) -> AdapterSpec:
        spec = self._base(base)["adapters"].get(name)
        if spec is None:
            raise UnknownModelError(f"The model '{base}:{name}' does not exist.")
        return spec

    def _base(self, base: str | None) -> dict[str, Any]:
        if base not in self.bases:
            raise UnknownModelError(f"The model '{base}' does not exist.")
        return self.bases[base]

    def _bump(self) -> int:
        self.version += 1
        return self.version
