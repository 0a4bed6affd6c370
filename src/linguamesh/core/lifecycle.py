"""Job lifecycle decisions: events in, commands out. Pure: time is passed in.

The shell feeds every event that concerns a job (selection outcome, socket
write finished, node messages, timer fired, node gone) to :class:`Lifecycle`
and carries out the commands it returns, in order. Timers are data: the
shell arms them and feeds back :class:`TimerKind` firings; a firing that no
longer matches the job (another attempt, another state, already finished) is
stale and changes nothing — so no timeout can ever act after a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .ids import JobId, NodeId
from .jobs import Job, JobState


class NoteKind(StrEnum):
    """What a :class:`Note` reports. The values are the stable names of the log events."""

    DISPATCH_FAILED = "job.dispatch_failed"
    RESULT_DUPLICATE = "job_result.duplicate"
    PENDING_TIMEOUT = "job.pending_timeout"
    ACK_TIMEOUT = "job.ack_timeout"
    RESULT_TIMEOUT = "job.result_timeout"
    NODE_LOST = "job.node_lost"
    STALE_EVENT = "job.stale_event"
    FAILOVER = "job.failover"

    @property
    def timeout(self) -> str | None:
        """The timer of a timeout (``pending``, ``ack``, ``result``), else None."""
        return _TIMEOUTS.get(self)


class TimerKind(StrEnum):
    PENDING = "pending"
    ACK = "ack"
    RESULT = "result"


_TIMEOUTS = {
    NoteKind.PENDING_TIMEOUT: "pending",
    NoteKind.ACK_TIMEOUT: "ack",
    NoteKind.RESULT_TIMEOUT: "result",
}


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    pending_timeout: float = 10.0
    ack_timeout: float = 5.0
    result_timeout: float = 30.0
    result_timeout_per_audio_second: float = 2.0
    max_attempts: int = 3

    def result_deadline(self, audio_seconds: float) -> float:
        return self.result_timeout + self.result_timeout_per_audio_second * audio_seconds


# ------------------------------------------------------------------ commands


@dataclass(frozen=True, slots=True)
class Select:
    job_id: JobId


@dataclass(frozen=True, slots=True)
class Assign:
    job_id: JobId
    node_id: NodeId
    attempt_id: int


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: JobId
    node_id: NodeId
    attempt_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    job_id: JobId
    node_id: NodeId
    attempt_id: int


@dataclass(frozen=True, slots=True)
class Arm:
    job_id: JobId
    kind: TimerKind
    attempt_id: int
    delay: float


@dataclass(frozen=True, slots=True)
class Disarm:
    job_id: JobId


@dataclass(frozen=True, slots=True)
class Status:
    job_id: JobId
    status: str  # queued | assigned | processing | retrying
    node_id: NodeId | None = None
    reason: str | None = None
    #: for people: what the reason means here (``no node serves en->de; pools: en-es``)
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class AckResult:
    job_id: JobId
    node_id: NodeId
    attempt_id: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The job ended: exactly one per job. ``payload`` is the node's result when ok."""

    job_id: JobId
    ok: bool
    node_id: NodeId | None
    payload: Any = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class Note:
    """A decision worth observing (a log record, a metric, a span event): what it is
    (``kind``) and its facts. The observer in the shell decides by ``kind``."""

    job_id: JobId
    kind: NoteKind
    fields: tuple[tuple[str, Any], ...] = ()


Command = Select | Assign | Cancel | Release | Arm | Disarm | Status | AckResult | Finish | Note

#: Node error codes that another node would hit too: no failover for them.
NON_RETRYABLE = frozenset({"bad_audio", "audio_too_large", "unsupported_language_pair"})


class Lifecycle:
    def __init__(self, config: LifecycleConfig) -> None:
        self.config = config

    # -------------------------------------------------------------- creation / selection

    def created(self, job: Job, now: float) -> list[Command]:
        job.waiting_since = now
        job.history.append((now, JobState.CREATED.value, job.attempt_id))
        return [
            Arm(job.job_id, TimerKind.PENDING, job.attempt_id, self.config.pending_timeout),
            Select(job.job_id),
        ]

    def selected(self, job: Job, node_id: NodeId, now: float) -> list[Command]:
        """A slot on ``node_id`` was reserved for the current attempt."""
        job.transition(JobState.ASSIGNED, now)
        job.node_id = node_id
        job.attempt_nodes[job.attempt_id] = node_id
        job.assigned_at = now
        return [
            Disarm(job.job_id),
            Assign(job.job_id, node_id, job.attempt_id),
            Status(job.job_id, "assigned", node_id),
        ]

    def selection_failed(
        self, job: Job, reason: str, first_try: bool, detail: str | None = None
    ) -> list[Command]:
        job.last_reason = reason
        if not first_try:
            return []
        return [Status(job.job_id, "queued", reason=reason, detail=detail)]

    # -------------------------------------------------------------- dispatch / node messages

    def dispatched(self, job: Job, attempt_id: int, ok: bool, now: float) -> list[Command]:
        """The ``job_assign`` write to the node socket finished (``ok``) or failed."""
        if job.state is not JobState.ASSIGNED or attempt_id != job.attempt_id:
            return [self._stale(job, "dispatched", attempt_id)]
        if not ok:
            return [Note(job.job_id, NoteKind.DISPATCH_FAILED)] + self._failover(
                job, "dispatch_failed", "node_failed", now, cancel=False
            )
        job.transition(JobState.DISPATCHED, now)
        job.dispatched_at = now
        return [Arm(job.job_id, TimerKind.ACK, attempt_id, self.config.ack_timeout)]

    def acked(self, job: Job, attempt_id: int, now: float) -> list[Command]:
        if job.state is not JobState.DISPATCHED or attempt_id != job.attempt_id:
            return [self._stale(job, "job_ack", attempt_id)]
        job.transition(JobState.ACCEPTED, now)
        return [Disarm(job.job_id), self._arm_result(job)]

    def started(self, job: Job, attempt_id: int, now: float) -> list[Command]:
        if job.state not in (JobState.DISPATCHED, JobState.ACCEPTED) or (attempt_id != job.attempt_id):
            return [self._stale(job, "job_started", attempt_id)]
        cmds: list[Command] = []
        if job.state is JobState.DISPATCHED:  # started without a separate ack
            cmds += [Disarm(job.job_id), self._arm_result(job)]
        job.transition(JobState.RUNNING, now)
        cmds.append(Status(job.job_id, "processing", job.node_id))
        return cmds

    def rejected(self, job: Job, attempt_id: int, reason: str, now: float) -> list[Command]:
        if job.state.terminal or attempt_id != job.attempt_id or job.node_id is None:
            return [self._stale(job, "job_reject", attempt_id)]
        return self._failover(job, f"rejected: {reason}", "node_failed", now, cancel=False)

    def result(
        self,
        job: Job,
        attempt_id: int,
        node_id: NodeId,
        success: bool,
        payload: Any,
        error_code: str | None,
        error_message: str | None,
        now: float,
    ) -> list[Command]:
        """A ``job_result`` arrived. The first valid result wins; copies are acked and dropped."""
        ack = AckResult(job.job_id, node_id, attempt_id)
        if job.state.terminal:
            return [ack, Note(job.job_id, NoteKind.RESULT_DUPLICATE, (("attempt_id", attempt_id),))]
        if attempt_id > job.attempt_id or attempt_id < 1:
            return [ack, self._stale(job, "job_result", attempt_id)]
        current = job.attempt_id == attempt_id and job.node_id == node_id
        if not success and current:
            code = error_code or "node_failed"
            if code in NON_RETRYABLE or job.attempt_id >= self.config.max_attempts:
                return [ack, *self._end(job, False, node_id, None, code, error_message, now)]
            return [ack, *self._failover(job, f"node error: {code}", code, now, cancel=False)]
        if not success:
            # a failure report from an attempt we already gave up on: nothing to do
            return [ack, self._stale(job, "job_result", attempt_id)]
        cmds: list[Command] = [ack]
        if not current and job.node_id is not None:
            # a late result from an earlier attempt wins; stop the current attempt
            cmds.append(Cancel(job.job_id, job.node_id, job.attempt_id, "superseded"))
        return cmds + self._end(job, True, node_id, payload, None, None, now)

    def timer(self, job: Job, kind: TimerKind, attempt_id: int, now: float) -> list[Command]:
        if job.state.terminal or attempt_id != job.attempt_id:
            return [self._stale(job, f"timer.{kind}", attempt_id)]
        if kind is TimerKind.PENDING and job.state is JobState.CREATED:
            reason = job.last_reason or "no_available_pool"
            msg = f"no node could take the job within {self.config.pending_timeout:g}s ({reason})"
            return [
                Note(job.job_id, NoteKind.PENDING_TIMEOUT, (("reason", reason),)),
                *self._end(job, False, None, None, "no_available_node", msg, now),
            ]
        # a note names the node of the attempt: the failover that follows clears job.node_id
        if kind is TimerKind.ACK and job.state is JobState.DISPATCHED:
            note = Note(job.job_id, NoteKind.ACK_TIMEOUT, (("node_id", job.node_id),))
            return [note, *self._failover(job, "ack_timeout", "timeout", now)]
        if kind is TimerKind.RESULT and job.state in (JobState.ACCEPTED, JobState.RUNNING):
            note = Note(job.job_id, NoteKind.RESULT_TIMEOUT, (("node_id", job.node_id),))
            return [note, *self._failover(job, "result_timeout", "timeout", now)]
        return [self._stale(job, f"timer.{kind}", attempt_id)]

    def node_gone(self, job: Job, node_id: NodeId, now: float) -> list[Command]:
        if job.state.terminal or job.node_id != node_id or job.state is JobState.CREATED:
            return []
        note = Note(job.job_id, NoteKind.NODE_LOST, (("node_id", node_id),))
        return [note, *self._failover(job, "node_lost", "node_failed", now, cancel=False)]

    def cancel(self, job: Job, reason: str, now: float) -> list[Command]:
        if job.state.terminal:
            return []
        cmds: list[Command] = [Disarm(job.job_id)]
        if job.node_id is not None:
            cmds += [
                Cancel(job.job_id, job.node_id, job.attempt_id, reason),
                Release(job.job_id, job.node_id, job.attempt_id),
            ]
        job.transition(JobState.CANCELLED, now)
        cmds.append(Finish(job.job_id, False, job.node_id, None, "cancelled", reason))
        return cmds

    # -------------------------------------------------------------- helpers

    def _arm_result(self, job: Job) -> Arm:
        return Arm(
            job.job_id,
            TimerKind.RESULT,
            job.attempt_id,
            self.config.result_deadline(job.audio_seconds),
        )

    def _stale(self, job: Job, what: str, attempt_id: int) -> Note:
        return Note(
            job.job_id,
            NoteKind.STALE_EVENT,
            (("what", what), ("attempt_id", attempt_id), ("state", job.state.value)),
        )

    def _failover(
        self, job: Job, reason: str, code: str, now: float, *, cancel: bool = True
    ) -> list[Command]:
        node = job.node_id
        cmds: list[Command] = [Disarm(job.job_id)]
        if node is not None:
            if cancel:
                cmds.append(Cancel(job.job_id, node, job.attempt_id, reason))
            cmds.append(Release(job.job_id, node, job.attempt_id))
            job.excluded.add(node)
        if job.attempt_id >= self.config.max_attempts:
            msg = f"gave up after {job.attempt_id} attempts; last: {reason}"
            return cmds + self._end(job, False, node, None, code, msg, now, release=False)
        job.transition(JobState.CREATED, now)
        job.attempt_id += 1
        job.node_id = None
        job.waiting_since = now
        job.last_reason = reason
        return cmds + [
            Note(job.job_id, NoteKind.FAILOVER, (("reason", reason), ("from_node", node))),
            Status(job.job_id, "retrying", reason=reason),
            Arm(job.job_id, TimerKind.PENDING, job.attempt_id, self.config.pending_timeout),
            Select(job.job_id),
        ]

    def _end(
        self,
        job: Job,
        ok: bool,
        node_id: NodeId | None,
        payload: Any,
        code: str | None,
        message: str | None,
        now: float,
        *,
        release: bool = True,
    ) -> list[Command]:
        cmds: list[Command] = [Disarm(job.job_id)]
        if release and job.node_id is not None and job.state is not JobState.CREATED:
            cmds.append(Release(job.job_id, job.node_id, job.attempt_id))
        job.transition(JobState.COMPLETED if ok else JobState.FAILED, now)
        job.failure_code = code
        cmds.append(Finish(job.job_id, ok, node_id, payload, code, message))
        return cmds
