"""The Ray Serve request router that feeds replica state into ``policy.Fleet``.

Serve creates one instance per deployment handle (the proxy's and every caller's). It learns
each replica's adapters from the routing stats that ``deployments.residency`` pushes (falling back
to Ray's ``multiplexed_model_ids``), keeps its own count of requests in flight per replica (so a
burst is spread before any stats refresh), and treats an adapter it has just sent to a replica as
loading there until that replica's report catches up, and counts every request queued in it
(from the moment Serve queues it until a replica accepts it, across rejections and retries) as
wanting its adapter, so the policy never evicts an adapter that queued requests still need.
Requests the policy makes wait get routing tasks of their own (see ``max_num_routing_tasks``).
Set it on a deployment with ``request_router_config(...)``.

A replica found for a request goes to the oldest pending request that wants the same adapter(s)
or ranked that replica first (``_fulfill_next_pending_request``), so no waiting request starves.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.serve._private.common import ReplicaID, RequestMetadata
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
from ray.util import metrics

from serve_app.routing.policy import Fleet, Knobs, ReplicaView, RequestView, with_placed

# NOTE: our logger, not "ray.serve": inside a replica (the ingress, where HTTP requests are routed)
# deployments.logs sends it to the replica's Serve log at INFO, one line per routing decision.
log = logging.getLogger("serve_app.routing")

ROUTER_CLASS = "serve_app.routing.router:AdapterAwareRouter"

# How long a queued request whose attempt ended unaccepted still counts as queued without a retry
# (Serve retries a rejected request at once; one that ran without the rejection protocol never).
_BOUNCE_TTL_S = 1.0


def request_router_config(
    knobs: dict[str, Any] | None = None,
    *,
    stats_period_s: float = 1.0,
    expect_ttl_s: float = 5.0,
    max_backoff_s: float = 0.05,
) -> RequestRouterConfig:
    """The ``request_router_config`` for a deployment that should use adapter-aware routing.

    ``knobs``: ``policy.Knobs`` fields. ``stats_period_s``: how often Serve polls
    ``record_routing_stats`` (pushes on every residency change come on top). ``expect_ttl_s``:
    how long an adapter just sent to a replica counts as loading there without confirmation.
    ``max_backoff_s``: the longest pause before Serve asks the router again for a request no
    replica took (Serve's default, 0.5 s, would stretch a short admission wait or a wait for a
    busy holder far past the moment a slot frees up).
    """
    Knobs(**(knobs or {}))  # fail early on a bad knob
    return RequestRouterConfig(
        request_router_class=ROUTER_CLASS,
        request_router_kwargs={"knobs": knobs or {}, "expect_ttl_s": expect_ttl_s},
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


class AdapterAwareRouter(RequestRouter):
    """Routes each request by ``policy.Fleet.decide``; see serve_app/routing/policy.py."""

    def initialize_state(self, knobs: dict[str, Any] | None = None, expect_ttl_s: float = 5.0):
        self._fleet = Fleet(Knobs(**(knobs or {})))
        self._expect_ttl_s = expect_ttl_s
        self._seen_v: dict[str, int] = {}
        self._reported: dict[str, ReplicaView] = {}
        # (replica, adapter) -> when this router sent it there, until the replica reports it.
        self._expected: dict[tuple[str, str], float] = {}
        self._inflight: dict[str, int] = {}
        self._last: dict[str, Any] = {}  # internal request id -> Decision
        self._running: dict[str, tuple[str, tuple[str, ...]]] = {}  # id -> (replica, adapters)
        self._queued: dict[str, tuple[str, ...]] = {}  # id -> adapters, until a replica accepts
        self._routing: set[str] = set()  # ids inside _choose_replica_for_request now
        self._bounced: dict[str, float] = {}  # queued ids whose attempt completed unaccepted
        self.decision_counts: dict[str, int] = {}

    # ---- replica set -----------------------------------------------------------------------

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id.unique_id for r in replicas}
        for rid in [r for r in self._fleet.ids if r not in live]:
            self._drop(rid)
        for r in replicas:
            self._sync(r)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._drop(replica_id.unique_id)
        log.info("adapter router: replica %s died, dropped", replica_id.unique_id)

    def _drop(self, rid: str) -> None:
        self._fleet.remove(rid)
        self._reported.pop(rid, None)
        self._seen_v.pop(rid, None)
        self._inflight.pop(rid, None)
        self._expected = {k: t for k, t in self._expected.items() if k[0] != rid}

    def _sync(self, r: RunningReplica) -> None:
        rid = r.replica_id.unique_id
        stats = r.routing_stats or {}
        v = int(stats.get("v", 0))
        old = self._reported.get(rid)
        if old is not None and v and v < self._seen_v.get(rid, 0):
            return  # a stale poll result landed after a fresher push
        if "resident" in stats:
            resident = frozenset(stats["resident"])
            loading = frozenset(stats.get("loading", ()))
        else:  # a replica without our residency reporter: Ray's multiplexed ids
            resident, loading = frozenset(r.multiplexed_model_ids), frozenset()
        self._seen_v[rid] = v
        view = ReplicaView(
            id=rid,
            resident=resident,
            loading=loading,
            ongoing=self._inflight.get(rid, int(stats.get("ongoing", 0))),
            max_ongoing=r.max_ongoing_requests,
            slots=int(stats.get("slots", 0)),
            victims=tuple((str(a), float(t)) for a, t in stats.get("victims", ())),
        )
        if old == view:
            return
        self._reported[rid] = view
        self._fleet.upsert(self._with_expected(view))

    def _with_expected(self, view: ReplicaView) -> ReplicaView:
        now = time.monotonic()
        extra = set()
        for (rid, a), t in list(self._expected.items()):
            if rid != view.id:
                continue
            if a in view.resident or a in view.loading or now - t > self._expect_ttl_s:
                del self._expected[(rid, a)]  # confirmed by the replica, or expired
            else:
                extra.add(a)
        return with_placed(view, extra, self._fleet.in_use(view.id))

    # ---- in-flight counts (this router's own view) ------------------------------------------

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self._set_inflight(replica_id.unique_id, self._inflight.get(replica_id.unique_id, 0) + 1)

    def on_new_queue_len_info(self, replica_id: ReplicaID, num_ongoing_requests: int) -> None:
        super().on_new_queue_len_info(replica_id, num_ongoing_requests)
        self._set_inflight(replica_id.unique_id, num_ongoing_requests)

    def decrement_queue_len_cache(self, replica_id: ReplicaID) -> None:
        super().decrement_queue_len_cache(replica_id)
        rid = replica_id.unique_id
        self._set_inflight(rid, max(0, self._inflight.get(rid, 0) - 1))

    def _set_inflight(self, rid: str, n: int) -> None:
        if rid in self._fleet:
            self._inflight[rid] = n
            self._fleet.set_ongoing(rid, n)

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
        self._expire_stale()
        mid = pending_request.metadata.multiplexed_model_id or ""
        request = RequestView.from_model_id(mid, time.time() - pending_request.created_at)
        decision = self._fleet.decide(request)
        self._last[pending_request.metadata.internal_request_id] = (decision, request)
        if decision.ids and decision.kind in ("cold", "spill"):
            # NOTE: expect the adapter on the first choice now, not when the replica accepts (a
            # round trip later): concurrent requests for it must see it placed, or a burst for
            # one cold adapter would be placed on several replicas.
            self._expect(decision.ids[0], request.adapters)
        # NOTE: an empty list (a cold adapter waiting for admission) makes Ray back off and ask
        # again, the request staying queued in this router.
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        return [[by_id[i]] for i in decision.ids if i in by_id]

    async def _choose_replica_for_request(self, pending_request: PendingRequest, **kw):
        # NOTE: Serve's private entry point for every request it queues (pinned Ray version):
        # a request counts as waiting from the moment it is queued (not only once one of the
        # router's few routing tasks reaches it) until a replica accepts it (a replica that
        # rejects it sends it back here), so queued requests protect their adapter from eviction
        # (policy: guarded replicas).
        rid = pending_request.metadata.internal_request_id
        self._bounced.pop(rid, None)
        if rid not in self._queued:
            mid = pending_request.metadata.multiplexed_model_id or ""
            self._queued[rid] = RequestView.from_model_id(mid).adapters
            self._fleet.waiting(self._queued[rid], +1)
        self._routing.add(rid)
        try:
            return await super()._choose_replica_for_request(pending_request, **kw)
        except BaseException:
            self._unqueue(rid)  # cancelled: the caller went away
            raise
        finally:
            self._routing.discard(rid)

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: RequestMetadata | None = None
    ):
        # NOTE: Serve's private hand-off (pinned Ray version). A replica found for a request goes
        # to the oldest pending request that wants the same adapter(s) or ranked that replica
        # first when it was last routed. Otherwise requests backing off (their replicas full) lose
        # every freed slot to requests that ask in between: a hot adapter's requests starved for
        # up to 0.75 s, cold ones for 0.3-0.5 s, at max_ongoing_requests = 2. Not FIFOMixin: it
        # hands the replica to the oldest request of any adapter, wherever it should go.
        found_for = request_metadata
        if request_metadata is not None:
            rid = replica.replica_id.unique_id
            older = self._first_in_line(rid, request_metadata)
            if older is not None:
                mine = self._last.get(request_metadata.internal_request_id)
                theirs = self._last.get(older.metadata.internal_request_id)
                if mine is not None and (theirs is None or rid not in theirs[0].kinds):
                    # the same adapters: logged by the decision that found the replica
                    self._last[older.metadata.internal_request_id] = mine
                request_metadata = older.metadata
        super()._fulfill_next_pending_request(replica, request_metadata)
        for md in (found_for, request_metadata):
            if md is not None:
                self._prune_model_index(md.multiplexed_model_id)

    def _first_in_line(self, rid: str, found_for: RequestMetadata) -> PendingRequest | None:
        mid = found_for.multiplexed_model_id
        for p in self._pending_requests_to_fulfill:  # oldest first
            if p.future.done():
                continue
            if p.metadata.internal_request_id == found_for.internal_request_id:
                return None
            if mid and p.metadata.multiplexed_model_id == mid:
                return p
            last = self._last.get(p.metadata.internal_request_id)
            if last is not None and last[0].ids and last[0].ids[0] == rid:
                return p
        return None

    def _prune_model_index(self, model_id: str) -> None:
        # NOTE: Serve indexes every pending request by model id but only its MultiplexMixin
        # prunes the index (lazily from the front), so without it the index would grow forever.
        pending = self._pending_requests_by_model_id.get(model_id)
        while pending and pending[0].future.done():
            pending.popleft()
        if not pending:
            self._pending_requests_by_model_id.pop(model_id, None)

    def _unqueue(self, internal_request_id: str) -> None:
        self._bounced.pop(internal_request_id, None)
        adapters = self._queued.pop(internal_request_id, None)
        if adapters is not None:
            self._fleet.waiting(adapters, -1)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result):
        rid = replica_id.unique_id
        self._unqueue(pending_request.metadata.internal_request_id)
        last = self._last.pop(pending_request.metadata.internal_request_id, None)
        if last is None:
            return
        decision, request = last
        self._fleet.observe(request)
        kind = decision.kinds.get(rid, "fallback")
        log.info(
            "adapter router: %r -> replica %s (%s, waited %.3fs)",
            request.key,
            rid,
            kind,
            time.time() - pending_request.created_at,
        )
        self.decision_counts[kind] = self.decision_counts.get(kind, 0) + 1
        _decision_counter().inc(tags={"deployment": self._deployment_id.name, "kind": kind})
        self._expect(rid, request.adapters)
        self._running[pending_request.metadata.internal_request_id] = (rid, request.adapters)
        self._fleet.started(rid, request.adapters)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        running = self._running.get(internal_request_id)
        if running is not None and running[0] == replica_id.unique_id:
            # NOTE: the replica check: a rejected earlier attempt's completion can come late
            del self._running[internal_request_id]
            self._fleet.finished(*running)
        elif internal_request_id in self._queued:
            # NOTE: a replica rejected it (Serve retries it: still queued, still wanting its
            # adapter) or, without Serve's rejection protocol, it ran: forget it unless a retry
            # comes soon (_expire_stale).
            self._bounced[internal_request_id] = time.monotonic()

    def _expect(self, rid: str, adapters: tuple[str, ...]) -> None:
        if rid not in self._fleet:
            return
        held = self._fleet.view(rid)
        for a in adapters:
            if a not in held.resident and a not in held.loading:
                self._expected.setdefault((rid, a), time.monotonic())
                self._fleet.add_expected(rid, a)

    def _expire_stale(self) -> None:
        if len(self._last) > 10_000:  # requests routed without a callback (no rejection protocol)
            self._last.clear()
        if len(self._running) > 100_000:  # completions never reported: forget, don't leak
            self._running.clear()
        if len(self._queued) > 100_000:  # acceptances never reported: forget, don't leak
            for rid in list(self._queued):
                self._unqueue(rid)
        now = time.monotonic()
        for rid, t in list(self._bounced.items()):
            if now - t > _BOUNCE_TTL_S and rid not in self._routing:
                self._unqueue(rid)
        if not self._expected:
            return
        stale = {k for k, t in self._expected.items() if now - t > self._expect_ttl_s}
        for k in stale:
            del self._expected[k]
        for rid in {k[0] for k in stale}:
            view = self._reported.get(rid)
            if view is not None:
                self._fleet.upsert(self._with_expected(view))
