"""The session lifecycle (``core/session_lifecycle.py``): examples, and a hypothesis state
machine that drives it with any order of events, plays the shell's part (one linger timer,
fired only while armed) and checks what must always hold."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from linguamesh.core.session_lifecycle import (
    ArmLinger,
    CancelLinger,
    Finish,
    Forget,
    SessionCommand,
    SessionLifecycle,
    SessionState,
)

LINGER = 120.0


def test_a_new_session_attaches_detaches_lingers_and_expires() -> None:
    life = SessionLifecycle(LINGER)
    assert life.state is SessionState.NEW and life.accepting
    assert life.attached_socket() == []
    assert life.state is SessionState.ATTACHED
    assert life.detached_socket() == [ArmLinger(LINGER)]
    assert life.state is SessionState.DETACHED and life.accepting
    assert life.detached_socket() == []  # a second detach arms no second timer
    assert life.linger_expired() == [Forget("expired")]
    assert life.state is SessionState.CLOSED and life.gone and not life.accepting


def test_a_resume_stops_the_linger_and_a_late_expiry_does_nothing() -> None:
    life = SessionLifecycle(LINGER)
    life.attached_socket()
    life.detached_socket()
    assert life.attached_socket() == [CancelLinger()]
    assert life.state is SessionState.ATTACHED
    assert life.linger_expired() == []  # the timer raced the resume: stale
    assert life.state is SessionState.ATTACHED


def test_close_waits_for_running_jobs_then_finishes_once() -> None:
    life = SessionLifecycle(LINGER)
    life.attached_socket()
    life.job_added("j1")
    life.job_added("j2")
    assert life.close() == []
    assert life.state is SessionState.CLOSING and not life.accepting
    assert life.close() == []  # a repeated session_close changes nothing
    assert life.job_done("j1") == []
    assert life.job_done("j2") == [Finish()]
    assert life.state is SessionState.FINISHING
    assert life.job_done("j2") == []  # the same end seen twice (local and through the history)
    assert life.forgotten() == []
    assert life.state is SessionState.CLOSED


def test_a_close_with_nothing_running_finishes_at_once() -> None:
    life = SessionLifecycle(LINGER)
    life.attached_socket()
    assert life.close() == [Finish()]


def test_a_closing_session_whose_client_dropped_lingers_and_expires() -> None:
    life = SessionLifecycle(LINGER)
    life.attached_socket()
    life.job_added("j")
    life.close()
    assert life.detached_socket() == [ArmLinger(LINGER)]
    assert life.state is SessionState.CLOSING
    assert life.linger_expired() == [Forget("expired")]
    assert life.job_done("j") == []  # forgotten already: no finish


def test_moved_away_is_terminal() -> None:
    life = SessionLifecycle(LINGER)
    life.attached_socket()
    life.detached_socket()
    assert life.moved_away() == [CancelLinger()]
    assert life.state is SessionState.MOVED and life.gone
    assert life.attached_socket() == [] and life.state is SessionState.MOVED
    assert life.moved_away() == []
    assert life.forgotten() == [] and life.state is SessionState.MOVED


def test_a_taken_over_session_that_never_attaches_lingers() -> None:
    life = SessionLifecycle(LINGER)  # NEW: its resume failed before the socket attached
    assert life.detached_socket() == [ArmLinger(LINGER)]
    assert life.linger_expired() == [Forget("expired")]


JOBS = ["a", "b", "c"]


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.life = SessionLifecycle(LINGER)
        self.timer_armed = False
        self.finishes = 0
        self.forgets = 0
        self.close_requested = False
        self.started: set[str] = set()
        self.ended: set[str] = set()

    def _do(self, commands: list[SessionCommand]) -> None:
        for cmd in commands:
            if isinstance(cmd, ArmLinger):
                assert not self.timer_armed, "a second linger timer"
                assert cmd.delay == LINGER
                self.timer_armed = True
            elif isinstance(cmd, CancelLinger):
                assert self.timer_armed, "cancelled a timer that is not armed"
                self.timer_armed = False
            elif isinstance(cmd, Finish):
                assert self.close_requested, "finished without a close"
                assert not (self.started - self.ended), "finished with jobs running"
                self.finishes += 1
            elif isinstance(cmd, Forget):
                self.forgets += 1

    @rule()
    def attach(self) -> None:
        self._do(self.life.attached_socket())

    @rule()
    def detach(self) -> None:
        self._do(self.life.detached_socket())

    @precondition(lambda self: self.timer_armed)
    @rule()
    def linger_fires(self) -> None:
        self.timer_armed = False  # a timer fires once
        self._do(self.life.linger_expired())

    @rule()
    def stale_linger(self) -> None:
        """A firing of a timer that was cancelled meanwhile (call_later raced the cancel)."""
        if not self.timer_armed:
            self._do(self.life.linger_expired())

    @rule()
    def close(self) -> None:
        if self.life.accepting:
            self.close_requested = True
        self._do(self.life.close())

    @rule(job=st.sampled_from(JOBS))
    def job_added(self, job: str) -> None:
        if self.life.accepting and job not in self.started:  # intake refuses when not accepting
            self.started.add(job)
            self.life.job_added(job)

    @rule(job=st.sampled_from(JOBS))
    def job_done(self, job: str) -> None:
        if job in self.started:
            self.ended.add(job)
        self._do(self.life.job_done(job))

    @precondition(lambda self: self.life.state is SessionState.FINISHING)
    @rule()
    def finish_flushed(self) -> None:
        self._do(self.life.forgotten())

    @rule()
    def moved_away(self) -> None:
        self._do(self.life.moved_away())

    @invariant()
    def timer_follows_the_state(self) -> None:
        assert self.life.lingering == self.timer_armed
        if self.timer_armed:
            assert not self.life.attached and not self.life.gone

    @invariant()
    def each_end_happens_once(self) -> None:
        assert self.finishes <= 1 and self.forgets <= 1
        assert self.finishes + self.forgets <= 1, "finished and forgotten both"

    @invariant()
    def states_agree(self) -> None:
        life = self.life
        if life.state is SessionState.ATTACHED:
            assert life.attached
        if life.state is SessionState.DETACHED:
            assert not life.attached
        if self.close_requested:
            assert not life.accepting
        if self.forgets:
            assert life.state is SessionState.CLOSED
        if life.state is SessionState.FINISHING or (life.state is SessionState.CLOSED and self.finishes):
            assert self.finishes == 1

    @invariant()
    def a_close_with_nothing_left_finishes(self) -> None:
        """Liveness: once closed by the client and every job it started ended, the
        session finishes (unless it expired or moved first)."""
        if (
            self.close_requested
            and not (self.started - self.ended)
            and not self.forgets
            and self.life.state is not SessionState.MOVED
        ):
            assert self.finishes == 1


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
