"""The router's records, in one owner: what each replica reported, what this router sent where,
and every request from the moment Serve queues it until its replica reports it done.

The ``Ledger`` turns router events into ``policy.Fleet`` updates, so the Ray Serve router
(router.py) only translates Serve's callbacks into ledger calls. No Ray here: unit tests drive it
with plain ids.

Per replica: its last report (``RoutingStats``, older reports ignored), this router's count of
requests in flight there (fresher than any report), and adapters just sent there that its report
does not show yet (*expected*: they count as loading until confirmed or ``expect_ttl_s``).
Per request: its adapters; *queued* (counted as wanting them, so their last holder is not
evicted) from the first routing attempt until a replica accepts it, across rejections; the
decision it was routed by; the replica it runs on (its adapters count as in use there).
A record no callback ever closes is dropped after ``max_age_s``, with its counts undone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from serve_app.routing.policy import Decision, Fleet, Kind, Knobs, ReplicaView, RequestView
from serve_app.routing.stats import RoutingStats

# How long a queued request whose attempt ended unaccepted still counts as queued without a retry
# (Serve retries a rejected request at once; one that ran without the rejection protocol never).
BOUNCE_TTL_S = 1.0


@dataclass(slots=True)
class _Request:
    adapters: tuple[str, ...]
    since: float  # monotonic, first seen
    queued: bool = False  # counted in Fleet.waiting
    routing: bool = False  # inside one of Serve's routing calls now
    bounced: float | None = None  # when an unaccepted attempt completed (monotonic)
    decision: tuple[Decision, RequestView] | None = None  # the last one, until routed
    running_on: str | None = None  # replica that accepted it, until completed


@dataclass(frozen=True, slots=True)
class Routed:
    """A request a replica accepted: how it counts (``kind``), for which adapters, and (a load:
    cold or spill) whether their files were on the replica's node (``local``)."""

    kind: Kind
    key: str
    local: bool = False


class Ledger:
    def __init__(
        self,
        knobs: Knobs | None = None,
        expect_ttl_s: float = 5.0,
        max_age_s: float = 600.0,
        slots: int = 0,
    ) -> None:
        self.fleet = Fleet(knobs, slots=slots)
        self.expect_ttl_s, self.max_age_s = expect_ttl_s, max_age_s
        self._reported: dict[str, tuple[int, ReplicaView]] = {}  # replica -> (seq, view)
        self._inflight: dict[str, int] = {}
        self._expected: dict[tuple[str, str], float] = {}  # (replica, adapter) -> sent at
        self._requests: dict[str, _Request] = {}
        self._bounced: set[str] = set()  # index of requests with ``bounced`` set
        self._aged_at = time.monotonic()
        self.decision_counts: dict[str, int] = {}

    # ---- replicas ------------------------------------------------------------------------

    def keep_replicas(self, live: Iterable[str]) -> None:
        """Forget every replica not in ``live``."""
        alive = set(live)
        for rid in [r for r in self.fleet.ids if r not in alive]:
            self.drop_replica(rid)

    def drop_replica(self, rid: str) -> None:
        self.fleet.remove(rid)
        self._reported.pop(rid, None)
        self._inflight.pop(rid, None)
        self._expected = {k: t for k, t in self._expected.items() if k[0] != rid}

    def report(
        self, rid: str, stats: RoutingStats | None, model_ids: Iterable[str], max_ongoing: int
    ) -> None:
        """A replica's routing stats (or, from a replica without our publisher, Ray's
        multiplexed model ids)."""
        old = self._reported.get(rid)
        seq = stats.seq if stats else 0
        if old is not None and seq and seq < old[0]:
            return  # a stale poll result landed after a fresher push
        if stats is not None:
            resident, loading = frozenset(stats.resident), frozenset(stats.loading)
        else:
            resident, loading = frozenset(model_ids), frozenset()
        view = ReplicaView(
            id=rid,
            resident=resident,
            loading=loading,
            ongoing=self._inflight.get(rid, stats.ongoing if stats else 0),
            max_ongoing=max_ongoing,
            slots=stats.slots if stats else 0,
            victims=stats.victims if stats else (),
            load_s=stats.load_s if stats else 0.0,
            local=frozenset(stats.local) if stats else frozenset(),
        )
        if old is not None and old[1] == view:
            self._reported[rid] = (seq, view)
            return
        self._reported[rid] = (seq, view)
        self._apply(view)

    def _apply(self, view: ReplicaView) -> None:
        """A reported view, then what this router sent there that the report does not show."""
        self.fleet.upsert(view)
        now = time.monotonic()
        extra = []
        for (rid, a), t in list(self._expected.items()):
            if rid != view.id:
                continue
            if a in view.resident or a in view.loading or now - t > self.expect_ttl_s:
                del self._expected[(rid, a)]  # confirmed by the replica, or expired
            else:
                extra.append(a)
        if extra:
            self.fleet.place(view.id, extra)

    # ---- requests in flight per replica (this router's own count) ---------------------------

    def sent(self, rid: str) -> None:
        self.set_inflight(rid, self._inflight.get(rid, 0) + 1)

    def send_done(self, rid: str) -> None:
        self.set_inflight(rid, max(0, self._inflight.get(rid, 0) - 1))

    def set_inflight(self, rid: str, n: int) -> None:
        if rid in self.fleet:
            self._inflight[rid] = n
            self.fleet.set_ongoing(rid, n)

    # ---- requests ------------------------------------------------------------------------

    def routing_started(self, req: str, model_id: str) -> None:
        """Serve queued ``req`` for routing (first time, or a retry after a rejection)."""
        r = self._record(req, model_id)
        self._clear_bounce(req, r)
        if not r.queued:
            r.queued = True
            self.fleet.waiting(r.adapters, +1)
        r.routing = True

    def routing_ended(self, req: str) -> None:
        r = self._requests.get(req)
        if r is not None:
            r.routing = False
            self._forget_if_done(req, r)

    def abandoned(self, req: str) -> None:
        """The caller went away before a replica accepted ``req``."""
        r = self._requests.get(req)
        if r is not None:
            r.decision = None
            self._unqueue(req)

    def decide(self, req: str, model_id: str, waited_s: float) -> Decision:
        self.expire()
        request = RequestView.from_model_id(model_id, waited_s)
        decision = self.fleet.decide(request)
        self._record(req, model_id).decision = (decision, request)
        if decision.ids and decision.kind in ("cold", "spill"):
            # NOTE: expect the adapter on the first choice now, not when the replica accepts (a
            # round trip later): concurrent requests for it must see it placed, or a burst for
            # one cold adapter would be placed on several replicas.
            self._expect(decision.ids[0], request.adapters)
        return decision

    def first_in_line(
        self, rid: str, found_for: str, model_id: str, pending: Iterable[tuple[str, str]]
    ) -> str | None:
        """Of ``pending`` (request id, model id; oldest first), the oldest one older than
        ``found_for`` that wants the same model id or ranked ``rid`` first when last routed.
        The replica found for ``found_for`` should go to it; the decision that found the replica
        labels it when the older request's own decision did not rank that replica."""
        for pid, pmid in pending:
            if pid == found_for:
                return None
            last = self._decision(pid)
            if (model_id and pmid == model_id) or (last is not None and last[0].ids[:1] == [rid]):
                mine = self._decision(found_for)
                if mine is not None and (last is None or rid not in last[0].kinds):
                    self._requests[pid].decision = mine  # the same adapters
                return pid
        return None

    def routed(self, req: str, rid: str) -> Routed | None:
        """A replica accepted ``req``; None if this router did not decide it."""
        self._unqueue(req)
        r = self._requests.get(req)
        last = r.decision if r is not None else None
        if r is None or last is None:
            if r is not None:
                self._forget_if_done(req, r)
            return None
        r.decision = None
        decision, request = last
        self.fleet.observe(request)
        kind = decision.kinds.get(rid, "fallback")
        self.decision_counts[kind] = self.decision_counts.get(kind, 0) + 1
        local = (
            kind in ("cold", "spill")
            and rid in self.fleet
            and self.fleet.view(rid).local.issuperset(request.adapters)
        )
        self._expect(rid, request.adapters)
        if r.running_on is not None:  # an earlier attempt never reported done
            self.fleet.finished(r.running_on, r.adapters)
        r.running_on = rid
        self.fleet.started(rid, request.adapters)
        return Routed(kind, request.key, local)

    def completed(self, req: str, rid: str) -> None:
        r = self._requests.get(req)
        if r is None:
            return
        if r.running_on == rid:
            # NOTE: the replica check: a rejected earlier attempt's completion can come late
            r.running_on = None
            self.fleet.finished(rid, r.adapters)
            self._forget_if_done(req, r)
        elif r.queued:
            # NOTE: a replica rejected it (Serve retries it: still queued, still wanting its
            # adapter) or, without Serve's rejection protocol, it ran: forget it unless a retry
            # comes soon (expire).
            r.bounced = time.monotonic()
            self._bounced.add(req)

    # ---- housekeeping --------------------------------------------------------------------

    def expire(self) -> None:
        """Forget bounced requests that were not retried, expected adapters never confirmed,
        and (every minute at most) records older than ``max_age_s``."""
        now = time.monotonic()
        for req in list(self._bounced):
            r = self._requests.get(req)
            if r is None or r.bounced is None:
                self._bounced.discard(req)
            elif now - r.bounced > BOUNCE_TTL_S and not r.routing:
                self._unqueue(req)
        if self._expected:
            stale = {k for k, t in self._expected.items() if now - t > self.expect_ttl_s}
            for k in stale:
                del self._expected[k]
            for rid in {k[0] for k in stale}:
                if rid in self._reported:
                    self._apply(self._reported[rid][1])
        if now - self._aged_at > 60.0:
            self._aged_at = now
            for req, r in list(self._requests.items()):
                if now - r.since > self.max_age_s:
                    self._unqueue(req)
                    if r.running_on is not None:
                        self.fleet.finished(r.running_on, r.adapters)
                    self._requests.pop(req, None)

    def __len__(self) -> int:
        """Requests this router has records of."""
        return len(self._requests)

    def _record(self, req: str, model_id: str) -> _Request:
        r = self._requests.get(req)
        if r is None:
            adapters = RequestView.from_model_id(model_id).adapters
            r = self._requests[req] = _Request(adapters, time.monotonic())
        return r

    def _decision(self, req: str) -> tuple[Decision, RequestView] | None:
        r = self._requests.get(req)
        return r.decision if r is not None else None

    def _unqueue(self, req: str) -> None:
        r = self._requests.get(req)
        if r is None:
            return
        self._clear_bounce(req, r)
        if r.queued:
            r.queued = False
            self.fleet.waiting(r.adapters, -1)
        self._forget_if_done(req, r)

    def _clear_bounce(self, req: str, r: _Request) -> None:
        r.bounced = None
        self._bounced.discard(req)

    def _forget_if_done(self, req: str, r: _Request) -> None:
        if not (r.queued or r.routing or r.running_on or r.decision):
            del self._requests[req]

    def _expect(self, rid: str, adapters: tuple[str, ...]) -> None:
        if rid not in self.fleet:
            return
        held = self.fleet.view(rid)
        new = [a for a in adapters if a not in held.resident and a not in held.loading]
        for a in new:
            self._expected.setdefault((rid, a), time.monotonic())
        if new:
            self.fleet.place(rid, new)
