"""Every private Ray Serve name this project uses, in one module (Ray is pinned at 2.60.0).

Public hooks cover most of routing (``ray.serve.request_router``). Three things have none:

- **Pushing residency at once.** Serve polls ``record_routing_stats`` every period; a load that
  starts must reach routers sooner, or a burst for one cold adapter lands on several replicas.
  ``publish_routing_info`` makes the call ``@serve.multiplexed`` itself makes.
- **Seeing every queued request.** ``choose_replicas`` only sees a request when one of Serve's
  few routing tasks picks it up; a queued request must count as wanting its adapter from the
  moment it is queued (``RouterHooks.on_routing_started``).
- **Choosing who gets a freed replica.** Serve hands a replica found for one request to that
  request; ``RouterHooks.hand_off`` may give it to an older waiting request instead, and the
  per-model index of pending requests, which only Serve's MultiplexMixin prunes, is pruned here.

``tests/unit/routing/test_serve_internals.py`` checks each name and signature against the
installed Ray, so an upgrade that renames one fails loudly instead of silently skipping an
override. Tests reach Serve's internals through the helpers at the bottom, too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ray.serve._private.client import ServeControllerClient
from ray.serve._private.common import (
    REPLICA_ID_FULL_ID_STR_PREFIX,
    RequestMetadata,
    RequestRoutingInfo,
)
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.context import _get_global_client
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

__all__ = [
    "SERVE_NAMESPACE",
    "PendingRequest",
    "ReplicaID",
    "RequestMetadata",
    "RouterHooks",
    "RunningReplica",
    "publish_routing_info",
    "replica_actor_name",
    "request_router_of",
    "serve_log_dir",
]

# (owner, attribute, parameters) this module relies on; checked by the unit test.
PRIVATE_SURFACE: list[tuple[type, str, tuple[str, ...] | None]] = [
    (RequestRouter, "_choose_replica_for_request", ("self", "pending_request", "is_retry")),
    (RequestRouter, "_fulfill_next_pending_request", ("self", "replica", "request_metadata")),
    (RequestRouter, "_pending_requests_to_fulfill", None),  # set in __init__
    (RequestRouter, "_pending_requests_by_model_id", None),
    (RequestRouter, "_deployment_id", None),
    (ServeControllerClient, "record_request_routing_info", ("self", "info")),
    (
        RequestRoutingInfo,
        "__init__",
        ("self", "replica_id", "multiplexed_model_ids", "routing_stats"),
    ),
]


def publish_routing_info(replica_id: ReplicaID, model_ids: list[str], stats: dict) -> None:
    """Push a replica's multiplexed model ids and routing stats to the controller now (it
    broadcasts them to every router within about one control-loop tick)."""
    _get_global_client().record_request_routing_info(
        RequestRoutingInfo(
            replica_id=replica_id, multiplexed_model_ids=model_ids, routing_stats=stats
        )
    )


class RouterHooks(RequestRouter):
    """A ``RequestRouter`` whose private hand-off points are public-looking hooks.

    Subclasses override ``on_routing_started`` / ``on_request_abandoned`` / ``on_routing_ended``
    / ``hand_off``.
    """

    def on_routing_started(self, pending: PendingRequest) -> None:
        """Serve queued ``pending`` for routing (first time, or again after a replica rejected
        it)."""

    def on_request_abandoned(self, pending: PendingRequest) -> None:
        """The caller went away (cancelled) before a replica was found for ``pending``."""

    def on_routing_ended(self, pending: PendingRequest) -> None:
        """Serve's routing of ``pending`` ended: a replica was found, or it was abandoned."""

    def hand_off(self, replica_id: str, found_for: RequestMetadata) -> RequestMetadata:
        """Which pending request gets a replica found for ``found_for`` (default: that one)."""
        return found_for

    def pending_oldest_first(self) -> Iterator[PendingRequest]:
        """Requests waiting for a replica, oldest first (done ones skipped)."""
        return (p for p in self._pending_requests_to_fulfill if not p.future.done())

    @property
    def deployment_name(self) -> str:
        return self._deployment_id.name

    async def _choose_replica_for_request(self, pending_request: PendingRequest, **kw: Any):
        self.on_routing_started(pending_request)
        try:
            return await super()._choose_replica_for_request(pending_request, **kw)
        except BaseException:
            self.on_request_abandoned(pending_request)
            raise
        finally:
            self.on_routing_ended(pending_request)

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: RequestMetadata | None = None
    ) -> None:
        chosen = request_metadata
        if request_metadata is not None:
            chosen = self.hand_off(replica.replica_id.unique_id, request_metadata)
        super()._fulfill_next_pending_request(replica, chosen)
        for md in (request_metadata, chosen):
            if md is not None:
                self._prune_model_index(md.multiplexed_model_id)

    def _prune_model_index(self, model_id: str) -> None:
        # NOTE: Serve indexes every pending request by model id but only its MultiplexMixin
        # prunes the index (lazily from the front), so without it the index would grow forever.
        pending = self._pending_requests_by_model_id.get(model_id)
        while pending and pending[0].future.done():
            pending.popleft()
        if not pending:
            self._pending_requests_by_model_id.pop(model_id, None)

    def pending_for_model(self, model_id: str) -> list[PendingRequest]:
        """Serve's index of pending requests for ``model_id`` (tests check it is pruned)."""
        return list(self._pending_requests_by_model_id.get(model_id, ()))


# ---- for tests and tools ---------------------------------------------------------------------


def replica_actor_name(app: str, deployment: str, replica_unique_id: str) -> str:
    """The Ray actor name of a replica (in ``SERVE_NAMESPACE``), e.g. to kill it in a test."""
    return f"{REPLICA_ID_FULL_ID_STR_PREFIX}{app}#{deployment}#{replica_unique_id}"


def serve_log_dir() -> str:
    """This Ray session's Serve log folder (replica, proxy and controller logs)."""
    import ray

    return f"{ray._private.worker._global_node.get_session_dir_path()}/logs/serve"


def request_router_of(handle: Any) -> RequestRouter:
    """The request router instance behind a deployment handle (after its first request)."""
    return handle._router._asyncio_router._request_router
