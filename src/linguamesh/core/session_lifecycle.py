"""Session lifecycle decisions: events in, commands out. Pure: no sockets, no timers, no
store; the shell (the session table) feeds events and carries out the commands in order.

States::

    NEW ──attached──▶ ATTACHED ◀──attached── DETACHED (lingering)
     │                   │ ──────detached──────▶ │
     │                   │                       │──linger expired──▶ CLOSED
     └──detached─────────┼───────────────────────┘
                         │ close (any of NEW / ATTACHED / DETACHED)
                         ▼
                      CLOSING ──last running job done──▶ FINISHING ──forgotten──▶ CLOSED
    any state but CLOSED ──moved away──▶ MOVED

* **NEW**: made here, no socket yet (a session taken over from another instance,
  before its resume is attached).
* **ATTACHED** / **DETACHED**: a client socket is attached / is not; a detached
  session lingers for ``linger`` seconds so the client can resume, then it is
  forgotten (its running jobs cancelled, its state deleted).
* **CLOSING**: the client sent ``session_close``: no new utterances; the jobs still
  running deliver their results first. Whether a socket is attached is tracked
  beside the state (a client may drop while its session closes), and lingering
  goes on while it is closing.
* **FINISHING**: ``session_closed`` is queued; once it is flushed the shell forgets
  the session (``forgotten``).
* **CLOSED** / **MOVED**: terminal. MOVED: another instance holds it now.

Each transition happens once: a repeated ``close`` or a second end of the last job
issues no second :class:`Finish`, a linger that expired after a resume issues
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .ids import JobId


class SessionState(StrEnum):
    NEW = "new"
    ATTACHED = "attached"
    DETACHED = "detached"
    CLOSING = "closing"
    FINISHING = "finishing"
    CLOSED = "closed"
    MOVED = "moved"


#: States in which the client may send new utterances.
ACCEPTING = frozenset({SessionState.NEW, SessionState.ATTACHED, SessionState.DETACHED})
#: The session is gone from this instance.
TERMINAL = frozenset({SessionState.CLOSED, SessionState.MOVED})


# ------------------------------------------------------------------ commands


@dataclass(frozen=True, slots=True)
class ArmLinger:
    """Start the linger timer: feed ``linger_expired`` after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class CancelLinger:
    """Cancel the linger timer."""


@dataclass(frozen=True, slots=True)
class Finish:
    """Queue ``session_closed``, flush what is queued, forget the session and close its
    socket normally."""


@dataclass(frozen=True, slots=True)
class Forget:
    """Forget the session at once: cancel its running jobs, stop delivery, delete its
    state (``reason`` for the log)."""

    reason: str


SessionCommand = ArmLinger | CancelLinger | Finish | Forget


@dataclass(slots=True)
class SessionLifecycle:
    """One session's lifecycle. Every mutator returns the commands to carry out."""

    linger: float
    state: SessionState = SessionState.NEW
    #: a client socket is attached
    attached: bool = False
    #: the linger timer is armed
    lingering: bool = False
    #: the session's jobs not yet ended (a closing session waits for them)
    running: set[JobId] = field(default_factory=set)

    # ------------------------------------------------------------------ views

    @property
    def accepting(self) -> bool:
        """New utterances are taken."""
        return self.state in ACCEPTING

    @property
    def closing(self) -> bool:
        """``session_close`` was received (or the session is gone)."""
        return self.state not in ACCEPTING

    @property
    def gone(self) -> bool:
        return self.state in TERMINAL

    # ------------------------------------------------------------------ events

    def attached_socket(self) -> list[SessionCommand]:
        """A client socket is attached (a new session's, or a resume's)."""
        if self.gone:
            return []
        self.attached = True
        if self.state in (SessionState.NEW, SessionState.DETACHED):
            self.state = SessionState.ATTACHED
        return self._stop_lingering()

    def detached_socket(self) -> list[SessionCommand]:
        """The client socket is gone (closed, cut, failed write): the session lingers."""
        self.attached = False
        if self.gone:
            return []
        if self.state in (SessionState.NEW, SessionState.ATTACHED):
            self.state = SessionState.DETACHED
        if self.lingering:
            return []
        self.lingering = True
        return [ArmLinger(self.linger)]

    def linger_expired(self) -> list[SessionCommand]:
        """The linger timer fired. Nothing when a socket came back (or the session ended or
        finishes anyway)."""
        if not self.lingering:
            return []
        self.lingering = False
        if self.attached or self.gone or self.state is SessionState.FINISHING:
            return []
        self.state = SessionState.CLOSED
        return [Forget("expired")]

    def close(self) -> list[SessionCommand]:
        """``session_close``: finish once the running jobs have delivered."""
        if not self.accepting:
            return []
        self.state = SessionState.CLOSING
        return self._maybe_finish()

    def job_added(self, job_id: JobId) -> None:
        self.running.add(job_id)

    def job_done(self, job_id: JobId) -> list[SessionCommand]:
        """A job of the session ended (its result is on its way to the client)."""
        if job_id not in self.running:
            return []
        self.running.discard(job_id)
        return self._maybe_finish()

    def forgotten(self) -> list[SessionCommand]:
        """The shell forgot the session (a finished close, an expiry, a stop)."""
        if self.state is not SessionState.MOVED:
            self.state = SessionState.CLOSED
        return self._stop_lingering()

    def moved_away(self) -> list[SessionCommand]:
        """Another instance holds the session now."""
        if self.gone:
            return []
        self.state = SessionState.MOVED
        self.attached = False
        return self._stop_lingering()

    # ------------------------------------------------------------------ helpers

    def _maybe_finish(self) -> list[SessionCommand]:
        if self.state is SessionState.CLOSING and not self.running:
            self.state = SessionState.FINISHING
            return [Finish()]
        return []

    def _stop_lingering(self) -> list[SessionCommand]:
        if not self.lingering:
            return []
        self.lingering = False
        return [CancelLinger()]
