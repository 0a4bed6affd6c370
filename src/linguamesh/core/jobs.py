"""The job state machine with checked transitions.

::

    created ──> assigned ──> dispatched ──> accepted ──> running ──> completed
       ^  \\        │             │             │            │  \\
       │   \\       └─────────────┴──── failover (attempt+1) ─┘   > failed | cancelled
       └────────────────────────────────────────┘

``created`` means "waiting for a node" (first attempt or a retry). Any
non-terminal state may end in ``failed`` or ``cancelled``; a result may
complete the job from any non-terminal state (a late result from an earlier
attempt is still a valid result). Terminal states never change again: an
illegal transition raises :class:`IllegalTransition`, it is never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .ids import JobId, NodeId, SessionId, TraceId


class JobState(StrEnum):
    CREATED = "created"
    ASSIGNED = "assigned"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
_ACTIVE = frozenset(JobState) - TERMINAL
_ENDINGS = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.CREATED: frozenset({JobState.ASSIGNED}) | _ENDINGS,
    JobState.ASSIGNED: frozenset({JobState.DISPATCHED, JobState.CREATED}) | _ENDINGS,
    JobState.DISPATCHED: frozenset({JobState.ACCEPTED, JobState.RUNNING, JobState.CREATED}) | _ENDINGS,
    JobState.ACCEPTED: frozenset({JobState.RUNNING, JobState.CREATED}) | _ENDINGS,
    JobState.RUNNING: frozenset({JobState.CREATED}) | _ENDINGS,
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, job_id: str, src: JobState, dst: JobState) -> None:
        super().__init__(f"job {job_id}: illegal transition {src} -> {dst}")
        self.src = src
        self.dst = dst


@dataclass(slots=True)
class Job:
    """One utterance translated into one target language."""

    job_id: JobId
    trace_id: TraceId
    session_id: SessionId
    utterance_index: int
    src_lang: str
    tgt_lang: str
    stages: tuple[str, ...]
    audio: bytes
    audio_format: str
    sample_rate: int
    audio_seconds: float
    created_at: float
    request_id: str | None = None
    preferred_node_id: NodeId | None = None
    #: wall-clock time (epoch seconds) the utterance began to be spoken, for transcripts
    spoken_at: float | None = None
    #: wall-clock time the utterance's speech ended (its audio was complete here)
    speech_ended_at: float | None = None
    state: JobState = JobState.CREATED
    attempt_id: int = 1
    node_id: NodeId | None = None
    excluded: set[NodeId] = field(default_factory=set)
    #: the node each attempt was assigned to (what a node may answer for, see ``authorized``)
    attempt_nodes: dict[int, NodeId] = field(default_factory=dict)
    #: Monotonic time the job entered ``created`` for the current attempt.
    waiting_since: float = 0.0
    assigned_at: float | None = None
    dispatched_at: float | None = None
    finished_at: float | None = None
    last_reason: str | None = None
    failure_code: str | None = None
    history: list[tuple[float, str, int]] = field(default_factory=list)

    @property
    def pair(self) -> str:
        """The language pair, as metrics, traces and the operator page name it (``en-es``)."""
        return f"{self.src_lang}-{self.tgt_lang}"

    def authorized(self, node_id: NodeId, attempt_id: int) -> bool:
        """May ``node_id`` answer for attempt ``attempt_id`` of this job? Only the node the
        attempt was assigned to may. An attempt made before this instance held the job has
        no record here; its node is then one of the excluded ones (every earlier attempt's
        node is excluded when the job fails over)."""
        assigned = self.attempt_nodes.get(attempt_id)
        if assigned is not None:
            return assigned == node_id
        return 1 <= attempt_id < self.attempt_id and node_id in self.excluded

    def transition(self, dst: JobState, now: float) -> None:
        if dst not in ALLOWED[self.state]:
            raise IllegalTransition(self.job_id, self.state, dst)
        self.state = dst
        self.history.append((now, dst.value, self.attempt_id))
        if dst.terminal:
            self.finished_at = now
