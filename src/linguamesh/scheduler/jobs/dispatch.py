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
from dataclasses import dataclass, field
from typing import Any

from ... import protocol as p
from ...core.ids import JobId, NodeId
from ...core.jobs import Job, JobState
from ...core.lifecycle import LifecycleConfig
from ...core.selection import SELECTORS, Outcome, Request
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


#: utterances whose node is remembered for their other jobs (the newest)
PLACED_KEPT = 10_000


@dataclass(slots=True)
class SelectionReport:
    """What one selection found and did, for the observer (logs, metrics, spans)."""

    #: the job's first selection
    first: bool
    #: counted in the metrics: once per attempt, not on every retry of a waiting job
    counted: bool
    #: the clock when the selection started
    started: float
    #: the pure selection's outcome (candidates, why nodes were passed over)
    outcome: Outcome
    #: ``ok``, ``queued`` (fair share) or ``failed``
    ended: str = "failed"
    node_id: NodeId | None = None
    reason: str | None = None
    detail: str | None = None
    #: the reservations tried, in order: (node, reserved; None: the store did not answer)
    tried: list[tuple[NodeId, bool | None]] = field(default_factory=list)
    #: the pools there are (a failed selection that counts)
    pools: list[str] | None = None
    #: jobs waiting (a job queued behind them)
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class Reserved:
    node_id: NodeId
    report: SelectionReport | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class HandedOver:
    holder: str
    report: SelectionReport | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Unavailable:
    reason: str
    #: this was the job's first selection (the client is told it is queued)
    first: bool
    #: the reason for people (which pools exist when none serves the pair)
    detail: str | None = None
    #: capacity is free but jobs of this kind waited first: retry the waiting jobs now
    retry_waiting: bool = False
    report: SelectionReport | None = field(default=None, compare=False)


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
        #: where an utterance's first job went: its jobs for other target languages go there
        #: when the node has room (it transcribes the utterance once for all: node/shared_asr.py)
        self._placed: OrderedDict[tuple[str, int], NodeId] = OrderedDict()

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
        """Choose a node for the job's current attempt and reserve a slot on it. Decides
        only: what happened is in the outcome's :class:`SelectionReport`, which the
        observer turns into logs, metrics and spans."""
        job = run.job
        first = run.first_selection
        run.first_selection = False
        # a job retried while it waits is counted once per attempt, not on every retry
        counted = first or job.job_id not in self.waiting
        started = self.clock()
        only = self._streaming_only(run)
        utterance = (job.session_id, job.utterance_index)
        # an utterance's jobs (one per target language) go to the node of the first when it
        # has room: the node hears the utterance once for all of them (node/shared_asr.py)
        sibling = self._placed.get(utterance)
        req = Request(
            job.src_lang,
            job.tgt_lang,
            requirements(job.stages, job.src_lang, job.tgt_lang),
            frozenset(job.excluded),
            job.preferred_node_id or sibling,
            only,
        )
        out = self.select_fn(self.store.nodes(), req, self.rng)
        report = SelectionReport(first, counted, started, out)
        if first and out.candidates and self.waiting and self._queued_behind(run):
            # a node has room, but jobs of this kind were waiting first: they go first
            self._enqueue(run)
            report.ended, report.reason, report.waiting = "queued", "fair_share", len(self.waiting)
            return Unavailable("no_capacity", first, retry_waiting=True, report=report)
        result_deadline = self.timeouts.result_deadline(job.audio_seconds)
        ttl = self.config.ack_timeout + result_deadline + 30.0
        shared = self.remote.shared
        for node_id in out.candidates:
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
                        # an instance that takes the job over continues its trace
                        traceparent=run.spans.traceparent() if run.spans is not None else None,
                    )
                    holder = self.remote.node_holder(node_id)
                    if holder is not None:  # and the job goes to the node's instance
                        entry = self.remote.handover_entry(job.job_id, self.handover_data(run, node_id))
                        handover = Handover(holder, entry)
                reserved = await self.store.reserve(
                    node_id, job.job_id, job.attempt_id, ttl, record, handover
                )
            except DependencyDown:
                report.tried.append((node_id, None))
                self._enqueue(run)
                report.ended, report.reason = "failed", "dependency_down"
                return Unavailable("dependency_down", first, report=report)
            report.tried.append((node_id, reserved))
            if reserved:
                self._last_served = job.session_id
                self.forget(job.job_id)
                self._placed[utterance] = node_id
                self._placed.move_to_end(utterance)
                if len(self._placed) > PLACED_KEPT:
                    self._placed.popitem(last=False)
                report.ended, report.node_id = "ok", node_id
                if handover is not None and handover.sent:  # the node's instance runs it from here on
                    self._relayed(run, handover.to_instance)
                    return HandedOver(handover.to_instance, report=report)
                return Reserved(node_id, report=report)
        reason = out.reason.value if out.reason else "no_capacity"
        detail = None
        if report.counted:
            # what the operator and the client need when nothing serves the pair: which pools exist
            report.pools = self.store.nodes().pool_names()
            if reason == "no_available_pool":
                detail = unserved_detail(job.src_lang, job.tgt_lang, report.pools)
        self._enqueue(run)
        report.ended, report.reason, report.detail = "failed", reason, detail
        return Unavailable(reason, first, detail, report=report)

    # ------------------------------------------------------------------ dispatch

    async def dispatch(self, run: JobRun, node_id: NodeId, attempt_id: int) -> Delivery:
        """Write ``job_assign`` to the node, or hand the job to the instance holding it."""
        job = run.job
        live = run.live if run.live is not None and run.live.open else None  # still being spoken
        if live is not None and node_id in self.registry.nodes and not self.registry.streams(node_id):
            # the streaming node chosen for an utterance still spoken is gone: select again
            return Written(False)
        if node_id not in self.registry.nodes:
            holder = self.remote.node_holder(node_id)
            if holder is not None and (live is None or live.relayed_from is None):
                # the reservation did not already put the job into that instance's inbox
                if await self.remote.hand_over(holder, job.job_id, self.handover_data(run, node_id)):
                    self._relayed(run, holder)
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

    def _streaming_only(self, run: JobRun) -> frozenset[NodeId] | None:
        """A job whose utterance is still spoken goes to a streaming node: any in the cluster
        when the session is held here (the audio is relayed to the node's instance), one held
        here when the job was relayed to us (it is not relayed twice). None: any node."""
        live = run.live
        if live is None or not live.open:
            return None
        if live.relayed_from is not None:
            return self.registry.streaming_nodes()
        return self.registry.streaming_anywhere()

    def _relayed(self, run: JobRun, holder: str) -> None:
        """A live job went to ``holder`` with the audio it had: what came meanwhile (and the
        end, if the utterance ended meanwhile) follows; the stream relays the rest."""
        live = run.live
        if live is None or run.relayed_len == 0:  # it went as a whole utterance
            return
        run.relayed_to = holder
        rest = bytes(live.pcm[run.relayed_len :])
        if rest or not live.open:
            size = None if live.open else len(live.pcm)
            self.remote.stream_audio(holder, run.job.job_id, run.relayed_len, rest, size)
            run.relayed_len = len(live.pcm)

    def handover_data(self, run: JobRun, node_id: NodeId) -> dict[str, Any]:
        """What the node's instance needs to run the job (audio as bytes). A live job takes
        the audio so far and streams; the rest is relayed (:meth:`_relayed`)."""
        job = run.job
        live = run.live
        if live is not None and live.open and live.relayed_from is None:
            job.audio = bytes(live.pcm)
            run.relayed_len = len(job.audio)
        data = job_data(job, run.tts, run.partials)
        if live is not None and live.open and live.relayed_from is None:
            data["live"] = {"pieces": live.pieces, "end_of_speech_ms": run.end_of_speech_ms}
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


def unserved_detail(src: str, tgt: str, pools: list[str]) -> str:
    """Why nothing can serve a pair, for people: which pools exist."""
    return f"no node serves {src}->{tgt} now; " + (
        f"pools: {', '.join(pools)}" if pools else "no node is connected"
    )
