"""The runner: the only caller of :mod:`~linguamesh.core.lifecycle`.

It holds the jobs in flight here (one :class:`JobRun` each), feeds every event
about a job to the lifecycle under that job's lock, and carries out the
commands it returns: selection and dispatch through the dispatcher, timers,
slot releases, cancels and result acks to nodes, status events and the final
result to the session. A node's ``job_ack`` therefore cannot overtake the
finish of the ``job_assign`` write it answers.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ... import protocol as p
from ...core.ids import JobId, NodeId
from ...core.jobs import Job, JobState
from ...core.lifecycle import (
    AckResult,
    Arm,
    Assign,
    Cancel,
    Command,
    Disarm,
    Finish,
    Lifecycle,
    Note,
    NoteKind,
    Release,
    Select,
    Status,
    TimerKind,
)
from ...observability import tracing
from ...observability.logging import bound, get_logger
from ...observability.metrics import Metrics
from ...state.base import DependencyDown, JobEnd, StateStore
from ..cluster.remote import Remote
from ..config import SchedulerConfig
from ..nodes.registry import Registry
from ..records import job_fields, job_record
from ..tasks import Tasks
from .dispatch import Dispatcher, HandedOver, Reserved, Unavailable, kind_of
from .jobrun import JobRun
from .observer import JobObserver
from .results import translation_result
from .spans import JobSpans

if TYPE_CHECKING:
    from ..sessions.table import SessionTable

#: A job's drafts go to the client at most once per this many seconds (per kind: the
#: transcript so far, the translation so far); the latest held back goes at the end of it.
PARTIAL_INTERVAL = 0.2

log = get_logger("linguamesh.scheduler")

#: The window of finished jobs kept for ``/api/v1/jobs/{id}`` and for telling a late
#: result of a finished job from an unknown one: the newest this many, none older than
#: FINISHED_JOBS_SECONDS. A finished job keeps no audio.
FINISHED_JOBS_KEPT = 2_000
FINISHED_JOBS_SECONDS = 600.0
#: A step: the commands for a job, computed under its lock from its current state.
Step = Callable[[Job], Iterable[Command]]


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """A node heard the speech of a streamed utterance end ``size`` bytes into it (for the
    utterance's stream)."""

    run: JobRun
    size: int
    #: the node's reason: ``pause``, ``sentence`` or ``length``
    reason: str = "pause"


class Runner:
    def __init__(
        self,
        config: SchedulerConfig,
        store: StateStore,
        remote: Remote,
        metrics: Metrics,
        tasks: Tasks,
        clock: Callable[[], float],
        lifecycle: Lifecycle,
        dispatcher: Dispatcher,
        registry: Registry,
        outbox: SessionTable,
    ) -> None:
        self.config = config
        self.store = store
        self.remote = remote
        self.metrics = metrics
        self.tasks = tasks
        self.clock = clock
        self.lifecycle = lifecycle
        self.dispatcher = dispatcher
        self.registry = registry
        self.outbox = outbox
        self.tracing = tracing.current("scheduler")
        self.runs: dict[JobId, JobRun] = {}
        self.finished: OrderedDict[JobId, Job] = OrderedDict()
        #: logs, metrics and spans of what the runner and the dispatcher decided
        self.observer = JobObserver(metrics)

    # ------------------------------------------------------------------ entry points

    async def start(self, run: JobRun, step: Step | None) -> None:
        """Hold a new (or adopted) job here and apply its first step, if any."""
        self.runs[run.job.job_id] = run
        if self.tracing is not None and run.spans is None:
            adopted = step is None or run.traceparent is not None
            run.spans = JobSpans(self.tracing, run.job, adopted=adopted, traceparent=run.traceparent)
        if step is not None:
            await self.apply(run, step)

    async def created(self, run: JobRun) -> None:
        await self.start(run, lambda j: self.lifecycle.created(j, self.clock()))

    async def reselect(self, run: JobRun) -> None:
        """A waiting job's selection, again (capacity may have appeared)."""
        await self.apply(run, _retry_select)

    def kick(self) -> None:
        """Capacity may have appeared: retry the waiting jobs (in a task of their own)."""
        if self.dispatcher.waiting:
            self.tasks.spawn(self.retry_waiting(), "retry-waiting")

    async def retry_waiting(self) -> None:
        """Try the waiting jobs in fair order; once a kind of job found no node, the
        others of that kind wait (jobs with excluded nodes are tried anyway)."""
        dispatcher = self.dispatcher
        if not dispatcher.waiting:
            return
        blocked: set[tuple[str, str, tuple[str, ...]]] = set()
        for run in dispatcher.fair_order():
            job = run.job
            if run.gone or job.state is not JobState.CREATED:
                dispatcher.forget(job.job_id)
                continue
            key = kind_of(job)
            if key in blocked and not job.excluded:
                continue
            await self.reselect(run)
            if job.state is JobState.CREATED and not job.excluded:
                blocked.add(key)

    async def cancel(self, job_ids: Iterable[JobId], reason: str) -> None:
        now = self.clock()
        for job_id in list(job_ids):
            run = self.runs.get(job_id)
            if run is not None:
                await self.apply(run, lambda j: self.lifecycle.cancel(j, reason, now))

    def jobs_on(self, node_id: NodeId) -> list[JobRun]:
        return [r for r in self.runs.values() if r.job.node_id == node_id]

    async def node_lost(self, node_id: NodeId, runs: Iterable[JobRun] | None = None) -> None:
        """The node is gone: its jobs fail over."""
        now = self.clock()
        for run in list(runs if runs is not None else self.jobs_on(node_id)):
            await self.apply(run, lambda j: self.lifecycle.node_gone(j, node_id, now))

    async def node_message(
        self, node_id: NodeId, msg: p.JobMessage, frame: str = "", *, routed: bool = False
    ) -> SpeechEnded | None:
        """A node's message about a job (ack, started, reject, partial, result). A job not
        running here goes to its owner, unless the message was ``routed`` here by it. A
        streamed utterance's end of speech is returned (for its stream)."""
        job_id = msg.job_id
        run = self.runs.get(JobId(job_id))
        if run is None and self.remote.shared and not routed:
            if await self.remote.forward(
                node_id, job_id, frame or p.encode_str(msg), isinstance(msg, p.JobResult)
            ):
                return None
            run = self.runs.get(JobId(job_id))  # taken over here by a result of a dead owner's job
        if (
            run is None
            and self.remote.shared
            and isinstance(msg, p.JobResult)
            and JobId(job_id) not in self.finished
            and await self.remote.recover(job_id)
        ):
            run = self.runs.get(JobId(job_id))  # owned here by its record, from before a restart
        if run is None:
            await self._unknown(node_id, msg)
            return None
        job = run.job
        if not job.authorized(node_id, msg.attempt_id):
            await self._refuse(node_id, msg, job)
            return None
        now = self.clock()
        if isinstance(msg, p.JobAck):
            if msg.attempt_id == job.attempt_id:
                self.registry.acked(node_id)
            log.info("job.acked", **job_fields(job), from_node=node_id, acked_attempt=msg.attempt_id)
            await self.apply(run, lambda j: self._acked(j, msg.attempt_id, now))
        elif isinstance(msg, p.JobStarted):
            log.info("job.started", **job_fields(job), acked_attempt=msg.attempt_id)
            await self.apply(run, lambda j: self.lifecycle.started(j, msg.attempt_id, now))
        elif isinstance(msg, p.JobReject):
            log.info("job.rejected", **job_fields(job), reason=msg.reason)
            await self.apply(run, lambda j: self.lifecycle.rejected(j, msg.attempt_id, msg.reason, now))
        elif isinstance(msg, p.JobPartial):
            if msg.attempt_id == job.attempt_id and not job.state.terminal:
                self._partial(run, msg)
        elif isinstance(msg, p.JobSpeechEnd):
            live = run.live
            if msg.attempt_id == job.attempt_id and live is not None and live.open:
                reason = msg.reason or "pause"
                log.info("job.speech_end", **job_fields(job), size=msg.size, reason=reason)
                return SpeechEnded(run, msg.size, reason)
        elif isinstance(msg, p.JobResult):
            if msg.attempt_id == job.attempt_id and run.held_partials:
                self._send_held_partials(run)  # the latest drafts, then the result
            log.info(
                "job_result.received",
                **{**job_fields(job), "node_id": node_id},
                result_attempt=msg.attempt_id,
                success=msg.success,
            )
            err = msg.error
            code, message = (err.code, err.message) if err else (None, None)
            await self.apply(
                run,
                lambda j: self.lifecycle.result(
                    j, msg.attempt_id, node_id, msg.success, msg, code, message, now
                ),
            )
        return None

    def _partial(self, run: JobRun, msg: p.JobPartial) -> None:
        """A draft: the transcript so far (from the first target's job: one per utterance)
        or, in a streaming job, the translation of the sentences committed so far."""
        job = run.job
        if msg.stage == "asr":
            run.last_partial = msg.text
        if not run.partials:
            return
        if msg.stage == "asr" and run.first_tgt:
            event = p.AsrPartial(utterance_index=job.utterance_index, text=msg.text, stable=msg.stable)
        elif msg.stage == "nmt":
            event = p.AsrPartial(
                utterance_index=job.utterance_index,
                text=run.last_partial,
                tgt_lang=job.tgt_lang,
                translation=msg.text,
            )
        else:
            return
        now = self.clock()
        last = run.partial_at.get(msg.stage, float("-inf"))
        if msg.stage in run.held_partials or now - last < PARTIAL_INTERVAL:
            # a node may send drafts as fast as it likes: the latest of each kind waits
            run.held_partials[msg.stage] = event
            if run.partial_timer is None:
                delay = max(0.0, last + PARTIAL_INTERVAL - now)
                run.partial_timer = self.tasks.call_later(delay, lambda: self._send_held_partials(run))
            return
        self._send_partial(run, msg.stage, event, now)

    def _send_partial(self, run: JobRun, stage: str, event: p.AsrPartial, now: float) -> None:
        job = run.job
        run.partial_at[stage] = now
        if not run.partial_sent:
            run.partial_sent = True
            self.metrics.first_partial.observe(max(0.0, now - job.created_at))
        self.outbox.emit(job.session_id, event)

    def _send_held_partials(self, run: JobRun) -> None:
        """The drafts held back, now (their interval is over, or the result came: the latest
        draft still goes before it)."""
        self.tasks.cancel(run.partial_timer)
        run.partial_timer = None
        held, run.held_partials = run.held_partials, {}
        if run.gone or run.job.state.terminal:
            return
        now = self.clock()
        for stage, event in held.items():
            self._send_partial(run, stage, event, now)

    def _acked(self, job: Job, attempt_id: int, now: float) -> list[Command]:
        """The node took the job; the ack the dispatched attempt waits for is timed (checked
        under the job's lock: a repeated or stale ack is not)."""
        if (
            job.state is JobState.DISPATCHED
            and attempt_id == job.attempt_id
            and job.dispatched_at is not None
        ):
            self.observer.acked(job, max(0.0, now - job.dispatched_at))
        return self.lifecycle.acked(job, attempt_id, now)

    async def _refuse(self, node_id: NodeId, msg: p.JobMessage, job: Job) -> None:
        """Only the node an attempt was assigned to may speak for it (result authority)."""
        kind = msg.__struct_config__.tag
        log.warning(
            "node.not_assigned",
            **{**job_fields(job), "node_id": node_id},
            kind=kind,
            claimed_attempt=msg.attempt_id,
            assigned_node=job.attempt_nodes.get(msg.attempt_id),
        )
        self.metrics.inc("node_messages_refused", kind=str(kind))
        err = p.Error(
            code=p.ErrorCode.NOT_ASSIGNED.value,
            message=f"attempt {msg.attempt_id} of job {msg.job_id} is not assigned to node {node_id}",
            ref=msg.job_id,
        )
        await self.registry.send(node_id, err)

    async def _unknown(self, node_id: NodeId, msg: p.JobMessage) -> None:
        job = self.finished.get(JobId(msg.job_id))
        if job is not None and not job.authorized(node_id, msg.attempt_id):
            await self._refuse(node_id, msg, job)
            return
        if isinstance(msg, p.JobResult):
            # a copy of a result for a job that already ended (or is unknown): ack and drop
            log.info(
                "job_result.duplicate",
                job_id=msg.job_id,
                node_id=node_id,
                attempt_id=msg.attempt_id,
                known=job is not None,
                trace_id=job.trace_id if job else None,
            )
            self.metrics.inc("results_duplicate")
            await self.registry.send(node_id, p.JobResultAck(job_id=msg.job_id, attempt_id=msg.attempt_id))
            return
        fields = (
            {**job_fields(job), "node_id": node_id}
            if job is not None
            else {"node_id": node_id, "job_id": msg.job_id}
        )
        log.info(
            "node.message_for_ended_job", **fields, kind=msg.__struct_config__.tag, known=job is not None
        )

    # ------------------------------------------------------------------ applying commands

    async def apply(self, run: JobRun, step: Step) -> None:
        """Apply ``step`` to the job under its lock, and every command that follows."""
        if run.gone:  # already finished (or handed over) and forgotten
            return
        job = run.job
        async with run.lock:
            with bound(**job_fields(job)):
                before = (job.state, job.attempt_id)
                queue = deque(step(job))
                while queue:
                    more = await self._run(run, queue.popleft())
                    if more:
                        queue.extendleft(reversed(more))
                if (job.state, job.attempt_id) != before and not job.state.terminal and not run.gone:
                    await self._persist(run)

    async def _run(self, run: JobRun, cmd: Command) -> list[Command]:
        job = run.job
        if isinstance(cmd, Select):
            sel = await self.dispatcher.select(run)
            if sel.report is not None:
                self.observer.selection(run, sel.report, self.clock())
            if isinstance(sel, Reserved):
                return self.lifecycle.selected(job, sel.node_id, self.clock())
            if isinstance(sel, Unavailable):
                if sel.retry_waiting:
                    self.kick()
                return self.lifecycle.selection_failed(job, sel.reason, sel.first, sel.detail)
            self._handed_over(run, sel)
        elif isinstance(cmd, Assign):
            out = await self.dispatcher.dispatch(run, cmd.node_id, cmd.attempt_id)
            if isinstance(out, HandedOver):
                self._handed_over(run, out)
                return []
            return self.lifecycle.dispatched(job, cmd.attempt_id, out.ok, self.clock())
        elif isinstance(cmd, Arm):
            self._arm(run, cmd)
        elif isinstance(cmd, Disarm):
            run.disarm()
        elif isinstance(cmd, Release):
            await self._release(run, cmd)
        elif isinstance(cmd, Cancel):
            log.info("job.cancel_sent", **job_fields(job), to_node=cmd.node_id, reason=cmd.reason)
            await self.registry.send(
                cmd.node_id, p.JobCancel(job_id=cmd.job_id, attempt_id=cmd.attempt_id, reason=cmd.reason)
            )
        elif isinstance(cmd, AckResult):
            await self.registry.send(
                cmd.node_id, p.JobResultAck(job_id=cmd.job_id, attempt_id=cmd.attempt_id)
            )
        elif isinstance(cmd, Status):
            if not run.gone:  # else handed over: its new owner reports
                self._status(job, cmd)
        elif isinstance(cmd, Note):
            self.observer.note(run, cmd)
            if cmd.kind is NoteKind.ACK_TIMEOUT:
                node = dict(cmd.fields).get("node_id")
                if node is not None:
                    await self.registry.ack_timed_out(NodeId(str(node)))
        elif isinstance(cmd, Finish):
            await self._finish(run, cmd)
        return []

    async def _release(self, run: JobRun, cmd: Release) -> None:
        if run.job.state.terminal and self.remote.shared:
            # the job ended: the slot is released together with the job record (one round trip)
            run.pending_release = (cmd.node_id, cmd.attempt_id)
            return
        try:
            ok = await self.store.release(cmd.node_id, cmd.job_id, cmd.attempt_id)
        except DependencyDown:
            ok = False  # the slot's TTL frees it
        log.debug("reservation.released", **job_fields(run.job), released=ok)
        self.kick()

    def _status(self, job: Job, cmd: Status) -> None:
        position = self.dispatcher.queue_position(job.job_id) if cmd.status == "queued" else None
        self.outbox.emit(
            job.session_id,
            p.JobStatus(
                utterance_index=job.utterance_index,
                tgt_lang=job.tgt_lang,
                status=cmd.status,  # type: ignore[arg-type]
                node_id=cmd.node_id,
                reason=cmd.reason,
                queue_position=position,
                detail=cmd.detail,
            ),
        )

    def _arm(self, run: JobRun, cmd: Arm) -> None:
        if run.gone:
            return

        def fire() -> None:
            if cmd.kind is TimerKind.PENDING and run.live is not None and run.live.open:
                self._arm(run, cmd)  # a job still being spoken waits for its node without a deadline
                return
            step: Step = lambda j: self.lifecycle.timer(j, cmd.kind, cmd.attempt_id, self.clock())  # noqa: E731
            self.tasks.spawn(self.apply(run, step), f"timer-{cmd.kind}")

        loop = asyncio.get_running_loop()
        run.timers.append(loop.call_later(cmd.delay, fire, context=contextvars.Context()))

    def _handed_over(self, run: JobRun, out: HandedOver) -> None:
        """``out.holder`` owns and runs the job from here on (the reservation recorded it as
        owner), so the node's answers are handled where they arrive and only the session's
        events cross back; this instance forgets the job (its assign and status steps
        belong to the new owner). It stays in its session's active jobs: its result,
        through the history, ends it there."""
        job = run.job
        log.info("job.handed_over", **job_fields(job), to_instance=out.holder)
        if run.spans is not None:
            run.spans.handed_over(out.holder)
        self._forget(run)

    def _forget(self, run: JobRun) -> None:
        run.gone = True
        run.disarm()
        self.tasks.cancel(run.partial_timer)
        run.partial_timer = None
        run.held_partials.clear()
        self.runs.pop(run.job.job_id, None)
        self.dispatcher.forget(run.job.job_id)

    # ------------------------------------------------------------------ the end of a job

    async def _finish(self, run: JobRun, cmd: Finish) -> None:
        job = run.job
        self._forget(run)
        now = self.clock()
        self._keep_finished(job, now)
        result = translation_result(job, cmd, (now - job.created_at) * 1000, now, run.tts)
        self.observer.finished(run, cmd, result, now)
        release = run.pending_release
        # the job ends (record, slot) in the same store step that puts the result into the
        # history: no round trip of its own, none before the client gets the result
        end = JobEnd(job.job_id, self.config.instance_id, release)
        if not self.outbox.emit_result(job, result, end, lambda: self._ended(release)):
            try:
                await self.store.finish_job(job.job_id, self.config.instance_id, release)
            except DependencyDown:
                pass  # the record and the slot expire by themselves
            self._ended(release)
            log.warning("result.dropped_session_gone", **job_fields(job))

    def _keep_finished(self, job: Job, now: float) -> None:
        """Into the bounded window of finished jobs, without its audio (bounded memory)."""
        job.audio = b""
        self.finished[job.job_id] = job
        finished = self.finished
        while finished:
            oldest = next(iter(finished.values()))
            if (
                len(finished) <= FINISHED_JOBS_KEPT
                and now - (oldest.finished_at or now) <= FINISHED_JOBS_SECONDS
            ):
                break
            finished.popitem(last=False)

    def _ended(self, release: tuple[NodeId, int] | None) -> None:
        """The job's record is finished and its slot released in the store."""
        if release is not None:
            self.kick()

    async def _persist(self, run: JobRun) -> None:
        """Record a retried job (back to created) and its next deadline, so another instance
        can take it over. The reservation writes the record of every other state, with the
        whole ack + result budget as its deadline."""
        job = run.job
        if not self.remote.shared or job.state is not JobState.CREATED:
            return
        rec = job_record(
            job,
            self.config.instance_id,
            run.tts,
            run.partials,
            time.time() + self.lifecycle.config.pending_timeout,
        )
        try:
            await self.store.save_job(rec)
        except DependencyDown as exc:
            log.warning("job.persist_failed", **job_fields(job), error=str(exc))

    # ------------------------------------------------------------------ take-over

    def resume_step(self, state: JobState) -> Step:
        """For a job another instance started (its owner died): the step its recorded
        state was waiting for."""
        now = self.clock()
        if state is JobState.CREATED:
            step: Step = lambda j: self.lifecycle.created(j, now)  # noqa: E731
        elif state is JobState.ASSIGNED:
            step = lambda j: self.lifecycle.dispatched(j, j.attempt_id, False, now)  # noqa: E731
        elif state is JobState.DISPATCHED:
            step = lambda j: self.lifecycle.timer(j, TimerKind.ACK, j.attempt_id, now)  # noqa: E731
        else:
            step = lambda j: self.lifecycle.timer(j, TimerKind.RESULT, j.attempt_id, now)  # noqa: E731
        return step


def _retry_select(job: Job) -> list[Command]:
    if job.state is not JobState.CREATED:
        return []
    return [Select(job.job_id)]
