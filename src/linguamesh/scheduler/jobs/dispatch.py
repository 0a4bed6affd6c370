"""Dispatch: the waiting queue, selection + reservation, and assign or hand-over.

The dispatcher decides where a job goes and carries the assignment there; it
never changes a job's state: it returns an outcome and the runner feeds it to
the lifecycle. Outcomes:

* :class:`Reserved` — a slot on ``node_id`` is reserved for the current attempt;
* :class:`HandedOver` — the node is held by instance ``holder``, which owns and
  runs the job from now on;
* :class:`Unavailable` — no node could take it (``reason``); the job waits in
  the queue and is tried again when capacity appears (the runner retries the waiting
  jobs, in :meth:`Dispatcher.fair_order`);
* :class:`Written` — the ``job_assign`` write finished (``ok``) or failed.
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ... import protocol as p
from ...core.ids import JobId, NodeId
from ...core.jobs import Job, JobState
from ...core.lifecycle import LifecycleConfig
from ...core.selection import SELECTORS, Request
from ...core.stages import requirements
from ...observability.logging import get_logger
from ...observability.metrics import Metrics
from ...state.base import DependencyDown, Handover, JobRecord, StateStore
from ..cluster.remote import Remote
from ..config import SchedulerConfig
from ..nodes.registry import Registry
from ..records import job_data, job_fields
from .jobrun import JobRun

log = get_logger("linguamesh.scheduler")


@dataclass(frozen=True, slots=True)
class Reserved:
    node_id: NodeId


@dataclass(frozen=True, slots=True)
class HandedOver:
    holder: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    reason: str
    #: this was the job's first selection (the client is told it is queued)
    first: bool
    #: the reason for people (which pools exist when none serves the pair)
    detail: str | None = None
    #: capacity is free but jobs of this kind waited first: retry the waiting jobs now
    retry_waiting: bool = False


@dataclass(frozen=True, slots=True)
class Written:
    ok: bool


Selection = Reserved | HandedOver | Unavailable
Delivery = Written | HandedOver


class Dispatcher:
    def __init__(
        self,
        config: SchedulerConfig,
        store: StateStore,
        remote: Remote,
        metrics: Metrics,
        clock: Callable[[], float],
        timeouts: LifecycleConfig,
        registry: Registry,
    ) -> None:
        self.config = config
        self.store = store
        self.remote = remote
        self.metrics = metrics
        self.clock = clock
        self.timeouts = timeouts
        self.registry = registry
        self.select_fn = SELECTORS[self.config.selector]
        self.rng = random.Random()
        #: jobs waiting for a node, oldest first (served round robin between sessions)
        self.waiting: OrderedDict[JobId, JobRun] = OrderedDict()
        self._per_session: Counter[str] = Counter()
        #: the session whose job took a slot last: the round robin goes on after it
        self._last_served: str | None = None

    # ------------------------------------------------------------------ the queue

    def _enqueue(self, run: JobRun) -> None:
        if run.job.job_id not in self.waiting:
            self.waiting[run.job.job_id] = run
            self._per_session[run.job.session_id] += 1

    def forget(self, job_id: JobId) -> None:
        run = self.waiting.pop(job_id, None)
        if run is not None:
            sid = run.job.session_id
            self._per_session[sid] -= 1
            if self._per_session[sid] <= 0:
                del self._per_session[sid]

    def queue_position(self, job_id: JobId) -> int | None:
        """Where the job stands in the round robin: its session's jobs ahead of it, and as
        many of every other session's (exact for a session's newest job; an estimate
        for older ones, which round robin moves as others join)."""
        run = self.waiting.get(job_id)
        if run is None:
            return None
        sid = run.job.session_id
        ahead = self._per_session[sid] - 1
        others = sum(min(n, ahead + 1) for s, n in self._per_session.items() if s != sid)
        return ahead + others + 1

    def fair_order(self) -> list[JobRun]:
        """The waiting jobs, one of each session in turn (round robin), each session's oldest
        first: one session's backlog cannot starve another's jobs. Sessions come in the
        order of their oldest waiting job, starting after the one served last, so the
        turn passes on from one drain to the next."""
        if len(self._per_session) <= 1:
            return list(self.waiting.values())
        queues: dict[str, deque[JobRun]] = {}
        for run in self.waiting.values():
            queues.setdefault(run.job.session_id, deque()).append(run)
        order: list[JobRun] = []
        rounds = list(queues.values())
        sessions = list(queues)
        if self._last_served in queues:
            turn = sessions.index(self._last_served) + 1
            rounds = rounds[turn:] + rounds[:turn]
        while rounds:
            for q in rounds:
                order.append(q.popleft())
            rounds = [q for q in rounds if q]
        return order

    def _queued_behind(self, run: JobRun) -> bool:
        """Jobs of the same kind wait already (of any session, its own included): a new
        job joins the queue rather than take the capacity they are waiting for; the retry
        that follows serves them in fair order."""
        kind = kind_of(run.job)
        return any(kind_of(o.job) == kind for o in self.waiting.values())

    # ------------------------------------------------------------------ selection

    async def select(self, run: JobRun) -> Selection:
        job = run.job
        first = run.first_selection
        run.first_selection = False
        select_started = self.clock()
        # a job retried while it waits is counted once per attempt, not on every retry
        counted = first or job.job_id not in self.waiting
        req = Request(
            job.src_lang,
            job.tgt_lang,
            requirements(job.stages, job.src_lang, job.tgt_lang),
            frozenset(job.excluded),
            job.preferred_node_id,
            # a job whose utterance is still spoken goes to a streaming node held here
            self.registry.streaming_nodes() if run.live is not None and run.live.open else None,
        )
        if first or job.attempt_id > 1:
            log.info(
                "selection.started",
                **job_fields(job),
                request_id=job.request_id,
                src_lang=job.src_lang,
                tgt_lang=job.tgt_lang,
                preferred_node_id=job.preferred_node_id,
                excluded=sorted(job.excluded),
            )
        out = self.select_fn(self.store.nodes(), req, self.rng)
        if first and out.candidates and self.waiting and self._queued_behind(run):
            # a node has room, but jobs of this kind were waiting first: they go first
            self._enqueue(run)
            self.metrics.inc("selections", outcome="queued", selector=out.selector)
            self.metrics.inc("selection_failures", reason="fair_share")
            log.info("selection.queued", **job_fields(job), reason="fair_share", waiting=len(self.waiting))
            return Unavailable("no_capacity", first, retry_waiting=True)
        if out.fallback is not None:
            if counted:
                self.metrics.inc("selection_fallbacks", reason=out.fallback.value)
            # once per attempt at info; a waiting job re-tried on every drain only at debug
            (log.info if counted else log.debug)(
                "selection.preferred_fallback",
                **job_fields(job),
                preferred_node_id=job.preferred_node_id,
                fallback_reason=out.fallback.value,
                selected_node=out.candidates[0] if out.candidates else None,
            )
        result_deadline = self.timeouts.result_deadline(job.audio_seconds)
        ttl = self.config.ack_timeout + result_deadline + 30.0
        shared = self.remote.shared
        for node_id in out.candidates:
            self.metrics.inc("reservations_attempted")
            handover = record = None
            try:
                if shared:  # the job's record rides along with the reservation
                    record = JobRecord(
                        job.job_id,
                        self.config.instance_id,
                        JobState.DISPATCHED.value,
                        job.attempt_id,
                        node_id,
                        time.time() + self.config.ack_timeout + result_deadline,
                    )
                    holder = self.remote.node_holder(node_id)
                    if holder is not None:  # and the job goes to the node's instance
                        entry = self.remote.handover_entry(job.job_id, self.handover_data(run, node_id))
                        handover = Handover(holder, entry)
                reserved = await self.store.reserve(
                    node_id, job.job_id, job.attempt_id, ttl, record, handover
                )
            except DependencyDown:
                if counted:
                    self.metrics.inc("selections", outcome="failed", selector=out.selector)
                    self.metrics.inc("selection_failures", reason="dependency_down")
                self._enqueue(run)
                log.warning("selection.failed", **job_fields(job), reason="dependency_down")
                return Unavailable("dependency_down", first)
            if reserved:
                self._last_served = job.session_id
                self.metrics.inc("reservations_succeeded")
                self.metrics.inc("selections", outcome="ok", selector=out.selector)
                # the attempt waited since the job (or its failover) needed a node
                self.metrics.queue_wait.labels(job.pair).observe(max(0.0, self.clock() - job.waiting_since))
                if run.spans is not None:
                    run.spans.reserved(job.waiting_since, select_started, node_id, job.attempt_id)
                self.forget(job.job_id)
                log.info(
                    "selection.succeeded",
                    **{**job_fields(job), "node_id": node_id},
                    selected_node=node_id,
                    selector=out.selector,
                    preferred_used=out.preferred_used,
                )
                log.debug(
                    "selection.pool_details",
                    **job_fields(job),
                    pool_count=out.pool_count,
                    eligible_pools=out.eligible_pools,
                    selected_pool=out.selected_pool,
                    attempts=out.attempts,
                )
                log.info("reservation.succeeded", **{**job_fields(job), "node_id": node_id})
                if handover is not None and handover.sent:  # the node's instance runs it from here on
                    return HandedOver(handover.to_instance)
                return Reserved(node_id)
            log.info("reservation.failed", **{**job_fields(job), "node_id": node_id})
        reason = out.reason.value if out.reason else "no_capacity"
        detail = None
        if counted:
            self.metrics.inc("selections", outcome="failed", selector=out.selector)
            self.metrics.inc("selection_failures", reason=reason)
            # what the operator and the client need when nothing serves the pair: which pools exist
            pools = self.store.nodes().pool_names()
            if reason == "no_available_pool":
                detail = f"no node serves {job.src_lang}->{job.tgt_lang} now; " + (
                    f"pools: {', '.join(pools)}" if pools else "no node is connected"
                )
            log.warning(
                "selection.failed",
                **job_fields(job),
                selector=out.selector,
                reason=reason,
                # why each node was passed over (none when no node serves the pair at all)
                breakdown={k.value: v for k, v in out.breakdown.counts.items()} or None,
                src_lang=job.src_lang,
                tgt_lang=job.tgt_lang,
                pools=pools,
                detail=detail,
            )
        self._enqueue(run)
        return Unavailable(reason, first, detail)

    # ------------------------------------------------------------------ dispatch

    async def dispatch(self, run: JobRun, node_id: NodeId, attempt_id: int) -> Delivery:
        """Write ``job_assign`` to the node, or hand the job to the instance holding it."""
        job = run.job
        live = run.live if run.live is not None and run.live.open else None  # still being spoken
        if live is not None and not self.registry.streams(node_id):
            # the streaming node chosen for an utterance still spoken is gone: select again
            return Written(False)
        if node_id not in self.registry.nodes:
            holder = self.remote.node_holder(node_id)
            if holder is not None:
                # the reservation did not already put the job into that instance's inbox
                if await self.remote.hand_over(holder, job.job_id, self.handover_data(run, node_id)):
                    return HandedOver(holder)
                return Written(False)
        deadline = self.config.ack_timeout + self.timeouts.result_deadline(job.audio_seconds)
        if live is not None:
            job.audio = bytes(live.pcm)  # the audio so far; the rest follows as job_audio
        msg = p.JobAssign(
            job_id=job.job_id,
            attempt_id=attempt_id,
            trace_id=job.trace_id,
            session_id=job.session_id,
            utterance_index=job.utterance_index,
            src_lang=job.src_lang,
            tgt_lang=job.tgt_lang,
            audio=job.audio,
            audio_format=job.audio_format,  # type: ignore[arg-type]
            sample_rate=job.sample_rate,
            stages=list(job.stages),  # type: ignore[arg-type]
            deadline_ms=int(deadline * 1000),
        )
        if live is not None:
            msg.streaming = True
            msg.audio_seq = live.pieces
            msg.end_of_speech_ms = run.end_of_speech_ms
            # set before the write: a chunk arriving meanwhile follows the assign on the socket
            run.streamed_to = (node_id, attempt_id)
        if run.spans is not None:
            msg.traceparent = run.spans.dispatching(node_id, attempt_id)
        ok = await self.registry.send(node_id, msg, job_id=job.job_id)
        if run.spans is not None:
            run.spans.dispatched(ok)
        if ok:
            latency = self.clock() - job.created_at
            log.info(
                "job.dispatched",
                **job_fields(job),
                dispatch_latency_seconds=round(latency, 6),
                otel_trace_id=run.spans.trace_id if run.spans is not None else None,
                streaming=msg.streaming,
            )
            self.metrics.inc("jobs_dispatched")
            self.metrics.dispatch_latency.observe(latency)
        return Written(ok)

    def handover_data(self, run: JobRun, node_id: NodeId) -> dict[str, Any]:
        """What the node's instance needs to run the job (audio as bytes)."""
        job = run.job
        data = job_data(job, run.tts, run.partials)
        data.update(
            attempt_id=job.attempt_id,
            node_id=node_id,
            excluded=sorted(job.excluded),
            first_tgt=run.first_tgt,
        )
        if run.spans is not None:  # the node's instance continues this job's trace
            data["traceparent"] = run.spans.traceparent()
        return data


def kind_of(job: Job) -> tuple[str, str, tuple[str, ...]]:
    """Jobs of one kind need the same capacity (pair and stages)."""
    return job.src_lang, job.tgt_lang, job.stages
