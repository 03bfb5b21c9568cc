"""The Ray Serve request router: Serve's callbacks in, ``ledger.Ledger`` calls out.

Serve creates one instance per deployment handle (the proxy's and every caller's). Each replica's
``RoutingStats`` (routing/stats.py, pushed by routing/publisher.py; Ray's multiplexed model ids
for a replica without it), this router's own count of requests in flight per replica, what it
just sent where, and every request from the moment Serve queues it until a replica accepts it
(across rejections and retries) feed ``policy.Fleet`` through the ledger, so the policy never
evicts an adapter that queued requests still need. Requests the policy makes wait get routing
tasks of their own (see ``max_num_routing_tasks``). A replica found for a request goes to the
oldest pending request that wants the same adapter(s) or ranked that replica first
(``hand_off``), so no waiting request starves. Serve's private hooks: routing/serve_internals.py.
Set it on a deployment with ``request_router_config(...)``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.serve.config import RequestRouterConfig
from ray.util import metrics

from serve_app.routing.ledger import Ledger
from serve_app.routing.policy import Knobs
from serve_app.routing.serve_internals import (
    PendingRequest,
    ReplicaID,
    RequestMetadata,
    RouterHooks,
    RunningReplica,
)
from serve_app.routing.stats import RoutingStats

# NOTE: our logger, not "ray.serve": inside a replica (the ingress, where HTTP requests are routed)
# deployments.logs sends it to the replica's Serve log at INFO, one line per routing decision.
log = logging.getLogger("serve_app.routing")

ROUTER_CLASS = "serve_app.routing.router:AdapterAwareRouter"


def request_router_config(
    knobs: dict[str, Any] | None = None,
    *,
    slots: int = 0,
    stats_period_s: float = 1.0,
    expect_ttl_s: float = 5.0,
    max_backoff_s: float = 0.05,
) -> RequestRouterConfig:
    """The ``request_router_config`` for a deployment that should use adapter-aware routing.

    ``knobs``: ``policy.Knobs`` fields. ``slots``: adapters each replica holds, as configured
    (0: learned from the replicas' reports; until a replica's first report lands, about a
    second after it starts, it is taken to have this many). ``stats_period_s``: how often
    Serve polls ``record_routing_stats`` (pushes on every residency change come on top).
    ``expect_ttl_s``: how long an adapter just sent to a replica counts as loading there without
    confirmation.
    ``max_backoff_s``: the longest pause before Serve asks the router again for a request no
    replica took (Serve's default, 0.5 s, would stretch a short admission wait or a wait for a
    busy holder far past the moment a slot frees up).
    """
    Knobs(**(knobs or {}))  # fail early on a bad knob
    return RequestRouterConfig(
        request_router_class=ROUTER_CLASS,
        request_router_kwargs={"knobs": knobs or {}, "expect_ttl_s": expect_ttl_s, "slots": slots},
        request_routing_stats_period_s=stats_period_s,
        request_routing_stats_timeout_s=max(5.0, 5 * stats_period_s),
        initial_backoff_s=min(0.025, max_backoff_s),
        max_backoff_s=max_backoff_s,
    )


_decisions: metrics.Counter | None = None


def _decision_counter() -> metrics.Counter:
    global _decisions
    if _decisions is None:
        _decisions = metrics.Counter(
            "loraserve_routing_decisions",
            description="Requests routed, by kind: hit, spill, cold, base, fallback.",
            tag_keys=("deployment", "kind"),
        )
    return _decisions


class AdapterAwareRouter(RouterHooks):
    """Routes each request by ``policy.Fleet.decide``; every record lives in ``ledger.Ledger``.
    This class only translates Serve's callbacks into ledger calls."""

    def initialize_state(
        self, knobs: dict[str, Any] | None = None, expect_ttl_s: float = 5.0, slots: int = 0
    ):
        self.ledger = Ledger(Knobs(**(knobs or {})), expect_ttl_s=expect_ttl_s, slots=slots)

    @property
    def decision_counts(self) -> dict[str, int]:
        return self.ledger.decision_counts

    # ---- replica set and reports -----------------------------------------------------------

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.ledger.keep_replicas(r.replica_id.unique_id for r in replicas)
        for r in replicas:
            self.ledger.report(
                r.replica_id.unique_id,
                RoutingStats.parse(r.routing_stats),
                r.multiplexed_model_ids,
                r.max_ongoing_requests,
            )

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.ledger.drop_replica(replica_id.unique_id)
        log.info("adapter router: replica %s died, dropped", replica_id.unique_id)

    # ---- in-flight counts (this router's own view) ------------------------------------------

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self.ledger.sent(replica_id.unique_id)

    def on_new_queue_len_info(self, replica_id: ReplicaID, num_ongoing_requests: int) -> None:
        super().on_new_queue_len_info(replica_id, num_ongoing_requests)
        self.ledger.set_inflight(replica_id.unique_id, num_ongoing_requests)

    def decrement_queue_len_cache(self, replica_id: ReplicaID) -> None:
        super().decrement_queue_len_cache(replica_id)
        self.ledger.send_done(replica_id.unique_id)

    # ---- routing ---------------------------------------------------------------------------

    @property
    def max_num_routing_tasks(self) -> int:
        # NOTE: Serve runs at most 2 x replicas routing tasks, each bound to one request until a
        # replica takes it. A request our policy makes wait (backing off) holds its task; without
        # a task more per waiting request, a few of them would block every request queued behind
        # them, including those that would free the replicas they wait for (a burst of cold
        # adapters then stalled until max_wait_s).
        return super().max_num_routing_tasks + min(self.num_routing_tasks_in_backoff, 256)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        # NOTE: without this flag Serve asks again at once when no replica took the request (it is
        # cleared for locality retries), and since this method never awaits, a waiting request
        # would spin the router's event loop, starving every other request and update.
        pending_request.routing_context.should_backoff = True
        md = pending_request.metadata
        decision = self.ledger.decide(
            md.internal_request_id,
            md.multiplexed_model_id or "",
            time.time() - pending_request.created_at,
        )
        # NOTE: an empty list (a cold adapter waiting for admission) makes Ray back off and ask
        # again, the request staying queued in this router.
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        return [[by_id[i]] for i in decision.ids if i in by_id]

    # A request counts as waiting from the moment Serve queues it (not only once one of the
    # router's few routing tasks reaches it) until a replica accepts it (a replica that rejects
    # it sends it back here), so queued requests protect their adapter from eviction (policy:
    # guarded replicas).

    def on_routing_started(self, pending: PendingRequest) -> None:
        md = pending.metadata
        self.ledger.routing_started(md.internal_request_id, md.multiplexed_model_id or "")

    def on_request_abandoned(self, pending: PendingRequest) -> None:
        self.ledger.abandoned(pending.metadata.internal_request_id)

    def on_routing_ended(self, pending: PendingRequest) -> None:
        self.ledger.routing_ended(pending.metadata.internal_request_id)

    def hand_off(self, replica_id: str, found_for: RequestMetadata) -> RequestMetadata:
        # NOTE: a replica found for a request goes to the oldest pending request that wants the
        # same adapter(s) or ranked that replica first when it was last routed. Otherwise
        # requests backing off (their replicas full) lose every freed slot to requests that ask
        # in between: a hot adapter's requests starved for up to 0.75 s, cold ones for 0.3-0.5 s,
        # at max_ongoing_requests = 2. Not FIFOMixin: it hands the replica to the oldest request
        # of any adapter, wherever it should go.
        pending = {p.metadata.internal_request_id: p for p in self.pending_oldest_first()}
        older = self.ledger.first_in_line(
            replica_id,
            found_for.internal_request_id,
            found_for.multiplexed_model_id,
            ((pid, p.metadata.multiplexed_model_id) for pid, p in pending.items()),
        )
        return pending[older].metadata if older is not None else found_for

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result):
        rid = replica_id.unique_id
        routed = self.ledger.routed(pending_request.metadata.internal_request_id, rid)
        if routed is None:
            return
        log.info(
            "adapter router: %r -> replica %s (%s, waited %.3fs%s)",
            routed.key,
            rid,
            routed.kind,
            time.time() - pending_request.created_at,
            ", its files on the node's disk" if routed.local else "",
        )
        _decision_counter().inc(tags={"deployment": self.deployment_name, "kind": routed.kind})

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.ledger.completed(internal_request_id, replica_id.unique_id)
