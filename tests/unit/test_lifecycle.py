"""The job lifecycle core: unit tests and a hypothesis state machine over random event sequences."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from linguamesh import protocol as p
from linguamesh.core.ids import JobId, NodeId, SessionId
from linguamesh.core.jobs import Job, JobState
from linguamesh.core.lifecycle import (
    AckResult,
    Arm,
    Assign,
    Cancel,
    Command,
    Disarm,
    Finish,
    Lifecycle,
    LifecycleConfig,
    Note,
    Release,
    Select,
    Status,
    TimerKind,
)
from linguamesh.state.memory import MemoryStateStore

from .test_jobs_and_stages import make_job

CFG = LifecycleConfig(pending_timeout=10, ack_timeout=5, result_timeout=30, max_attempts=3)
N1, N2 = NodeId("n1"), NodeId("n2")


def kinds(cmds: list[Command]) -> list[str]:
    return [type(c).__name__ for c in cmds]


def to_running(lc: Lifecycle, job: Job, node: NodeId = N1) -> None:
    lc.created(job, 0)
    lc.selected(job, node, 0)
    lc.dispatched(job, job.attempt_id, True, 0)
    lc.acked(job, job.attempt_id, 0)
    lc.started(job, job.attempt_id, 0)


def test_happy_path_commands() -> None:
    lc, job = Lifecycle(CFG), make_job()
    assert kinds(lc.created(job, 0)) == ["Arm", "Select"]
    assert kinds(lc.selected(job, N1, 0)) == ["Disarm", "Assign", "Status"]
    cmds = lc.dispatched(job, 1, True, 0)
    assert cmds == [Arm(job.job_id, TimerKind.ACK, 1, 5)]
    cmds = lc.acked(job, 1, 0)
    assert cmds[1] == Arm(job.job_id, TimerKind.RESULT, 1, 30 + 2 * job.audio_seconds)
    assert kinds(lc.started(job, 1, 0)) == ["Status"]
    cmds = lc.result(job, 1, N1, True, "payload", None, None, 1)
    assert kinds(cmds) == ["AckResult", "Disarm", "Release", "Finish"]
    assert cmds[-1] == Finish(job.job_id, True, N1, "payload", None, None)
    assert job.state is JobState.COMPLETED


def test_pending_timeout_fails_with_no_available_node_and_reason() -> None:
    lc, job = Lifecycle(CFG), make_job()
    lc.created(job, 0)
    lc.selection_failed(job, "no_capacity", True)
    cmds = lc.timer(job, TimerKind.PENDING, 1, 10)
    fin = cmds[-1]
    assert isinstance(fin, Finish) and fin.error_code == "no_available_node"
    assert fin.error_message and "no_capacity" in fin.error_message


def test_ack_timeout_cancels_excludes_and_retries() -> None:
    lc, job = Lifecycle(CFG), make_job()
    lc.created(job, 0)
    lc.selected(job, N1, 0)
    lc.dispatched(job, 1, True, 0)
    cmds = lc.timer(job, TimerKind.ACK, 1, 5)
    assert Cancel(job.job_id, N1, 1, "ack_timeout") in cmds
    assert Release(job.job_id, N1, 1) in cmds
    assert Status(job.job_id, "retrying", reason="ack_timeout") in cmds
    assert cmds[-1] == Select(job.job_id)
    assert job.attempt_id == 2 and job.excluded == {N1} and job.state is JobState.CREATED


def test_gives_up_after_max_attempts() -> None:
    lc, job = Lifecycle(CFG), make_job()
    lc.created(job, 0)
    for attempt in (1, 2, 3):
        node = NodeId(f"n{attempt}")
        lc.selected(job, node, 0)
        lc.dispatched(job, attempt, True, 0)
        cmds = lc.timer(job, TimerKind.ACK, attempt, 5)
    fin = cmds[-1]
    assert (
        isinstance(fin, Finish) and fin.error_code == "timeout" and "3 attempts" in (fin.error_message or "")
    )
    assert job.state is JobState.FAILED


def test_timer_after_result_is_stale_and_changes_nothing() -> None:
    lc, job = Lifecycle(CFG), make_job()
    to_running(lc, job)
    lc.result(job, 1, N1, True, None, None, None, 1)
    for kind in TimerKind:
        assert kinds(lc.timer(job, kind, 1, 99)) == ["Note"]
    assert job.state is JobState.COMPLETED


def test_old_attempt_timer_is_stale() -> None:
    lc, job = Lifecycle(CFG), make_job()
    lc.created(job, 0)
    lc.selected(job, N1, 0)
    lc.dispatched(job, 1, True, 0)
    lc.node_gone(job, N1, 1)
    lc.selected(job, N2, 1)
    lc.dispatched(job, 2, True, 1)
    assert kinds(lc.timer(job, TimerKind.ACK, 1, 5)) == ["Note"]
    assert job.node_id == N2 and job.state is JobState.DISPATCHED


def test_late_result_from_earlier_attempt_wins_and_cancels_current() -> None:
    lc, job = Lifecycle(CFG), make_job()
    to_running(lc, job, N1)
    lc.timer(job, TimerKind.RESULT, 1, 40)
    lc.selected(job, N2, 40)
    cmds = lc.result(job, 1, N1, True, "late", None, None, 41)
    assert Cancel(job.job_id, N2, 2, "superseded") in cmds
    assert Release(job.job_id, N2, 2) in cmds
    assert isinstance(cmds[-1], Finish) and cmds[-1].payload == "late" and cmds[-1].node_id == N1
    dup = lc.result(job, 2, N2, True, "second", None, None, 42)
    assert kinds(dup) == ["AckResult", "Note"]


def test_node_error_fails_over_unless_not_retryable() -> None:
    lc, job = Lifecycle(CFG), make_job()
    to_running(lc, job)
    cmds = lc.result(job, 1, N1, False, None, "node_failed", "boom", 1)
    assert job.state is JobState.CREATED and Select(job.job_id) in cmds
    job2 = make_job(job_id=JobId("job-2"))
    to_running(lc, job2)
    cmds = lc.result(job2, 1, N1, False, None, "bad_audio", "garbage", 1)
    assert isinstance(cmds[-1], Finish) and cmds[-1].error_code == "bad_audio"


def test_ack_racing_ahead_of_dispatch_is_stale_not_a_crash() -> None:
    lc, job = Lifecycle(CFG), make_job()
    lc.created(job, 0)
    lc.selected(job, N1, 0)
    assert kinds(lc.acked(job, 1, 0)) == ["Note"]


# ---------------------------------------------------------------- property test

NODES = [NodeId(f"n{i}") for i in range(3)]


def test_cancel_releases_the_slot_and_stops_the_node() -> None:
    lc, job = Lifecycle(CFG), make_job()
    to_running(lc, job)
    cmds = lc.cancel(job, "session_gone", 1)
    assert Release(job.job_id, N1, 1) in cmds and Cancel(job.job_id, N1, 1, "session_gone") in cmds
    assert cmds[-1] == Finish(job.job_id, False, N1, None, "cancelled", "session_gone")
    assert lc.cancel(job, "again", 2) == []  # ended: nothing more
    waiting = make_job(job_id=JobId("j2"))
    lc.created(waiting, 0)
    assert kinds(lc.cancel(waiting, "session_gone", 1)) == ["Disarm", "Finish"]  # no slot, no node


def test_the_last_attempt_gives_up_without_announcing_a_retry() -> None:
    lc, job = Lifecycle(CFG), make_job()
    lc.created(job, 0)
    for attempt in (1, 2, 3):
        lc.selected(job, NodeId(f"n{attempt}"), 0)
        lc.dispatched(job, attempt, True, 0)
        cmds = lc.timer(job, TimerKind.ACK, attempt, 5)
        retrying = [c for c in cmds if isinstance(c, Status) and c.status == "retrying"]
        assert len(retrying) == (1 if attempt < 3 else 0), (attempt, cmds)
    assert isinstance(cmds[-1], Finish) and not [c for c in cmds if isinstance(c, (Select, Arm))]


def run_sync(coro: Any) -> Any:
    """Run a coroutine that never suspends (the memory store's) to its end, here."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the coroutine suspended")


SID = SessionId("s-machine")


class LifecycleMachine(RuleBasedStateMachine):
    """Random event sequences never deliver a result twice, never out of order,
    and every job ends in exactly one terminal result. Results go through the
    scheduler's own ordering and history (the memory store), and a finished job
    produces no command but acks and notes."""

    def __init__(self) -> None:
        super().__init__()
        self.lc = Lifecycle(LifecycleConfig(max_attempts=3))
        self.jobs: list[Job] = []
        self.armed: dict[JobId, list[tuple[TimerKind, int]]] = {}
        self.stale: list[tuple[Job, TimerKind, int]] = []
        self.need_select: set[JobId] = set()
        self.to_dispatch: list[tuple[Job, NodeId, int]] = []
        self.attempt_node: dict[tuple[JobId, int], NodeId] = {}
        self.reserved: set[tuple[NodeId, JobId, int]] = set()
        self.finishes: dict[JobId, int] = {}
        self.store = MemoryStateStore()
        self.delivered: list[int] = []
        self.now = 0.0
        self.after_finish_violations: list[str] = []
        #: payloads of successful results sent per job; a job's ok Finish carries one of them
        self.ok_payloads: dict[JobId, set[str]] = {}

    def by_id(self, job_id: JobId) -> Job:
        return next(j for j in self.jobs if j.job_id == job_id)

    def run(self, job: Job, cmds: list[Command]) -> None:
        self.now += 0.1
        for c in cmds:
            if job.job_id in self.finishes and not isinstance(c, (AckResult, Note)):
                self.after_finish_violations.append(f"{c} after finish")
            if isinstance(c, Select):
                self.need_select.add(c.job_id)
            elif isinstance(c, Assign):
                self.to_dispatch.append((job, c.node_id, c.attempt_id))
            elif isinstance(c, Arm):
                self.armed.setdefault(c.job_id, []).append((c.kind, c.attempt_id))
            elif isinstance(c, Disarm):
                for kind, att in self.armed.pop(c.job_id, []):
                    self.stale.append((job, kind, att))
            elif isinstance(c, Release):
                assert (c.node_id, c.job_id, c.attempt_id) in self.reserved, c
                self.reserved.discard((c.node_id, c.job_id, c.attempt_id))
            elif isinstance(c, Finish):
                self.finishes[c.job_id] = self.finishes.get(c.job_id, 0) + 1
                if c.ok:
                    assert c.payload in self.ok_payloads.get(job.job_id, set()), (c.payload, job.job_id)
                result = p.TranslationResult(
                    utterance_index=job.utterance_index, tgt_lang="es", job_id=job.job_id,
                    status="ok" if c.ok else "failed",
                )  # fmt: skip
                events = run_sync(self.store.push_result(SID, "es", job.utterance_index, p.encode(result)))
                for _, data in events:
                    ev = p.decode_event(data)
                    assert isinstance(ev, p.TranslationResult)
                    self.delivered.append(ev.utterance_index)

    @rule()
    def create(self) -> None:
        idx = len(self.jobs)
        job = make_job(job_id=JobId(f"job-{idx}"), utterance_index=idx, created_at=self.now)
        self.jobs.append(job)
        run_sync(self.store.expect_result(SID, "es", idx))
        self.run(job, self.lc.created(job, self.now))

    @precondition(lambda self: self.need_select)
    @rule(data=st.data(), ok=st.booleans())
    def select(self, data: Any, ok: bool) -> None:
        job = self.by_id(data.draw(st.sampled_from(sorted(self.need_select))))
        self.need_select.discard(job.job_id)
        if job.state is not JobState.CREATED:
            return
        free = [n for n in NODES if n not in job.excluded]
        if ok and free:
            node = data.draw(st.sampled_from(free))
            self.reserved.add((node, job.job_id, job.attempt_id))
            self.attempt_node[(job.job_id, job.attempt_id)] = node
            self.run(job, self.lc.selected(job, node, self.now))
        else:
            self.run(job, self.lc.selection_failed(job, "no_capacity", True))

    @precondition(lambda self: self.to_dispatch)
    @rule(data=st.data(), ok=st.booleans())
    def dispatch(self, data: Any, ok: bool) -> None:
        i = data.draw(st.integers(0, len(self.to_dispatch) - 1))
        job, _node, attempt = self.to_dispatch.pop(i)
        self.run(job, self.lc.dispatched(job, attempt, ok, self.now))

    @precondition(lambda self: self.attempt_node)
    @rule(
        data=st.data(),
        kind=st.sampled_from(["ack", "started", "ok", "fail", "reject"]),
        payload=st.text(max_size=8),
        code=st.sampled_from(["node_failed", "timeout", "bad_audio", "unsupported_language_pair"]),
    )
    def node_message(self, data: Any, kind: str, payload: str, code: str) -> None:
        (job_id, attempt) = data.draw(st.sampled_from(sorted(self.attempt_node)))
        job, node = self.by_id(job_id), self.attempt_node[(job_id, attempt)]
        if kind == "ack":
            cmds = self.lc.acked(job, attempt, self.now)
        elif kind == "started":
            cmds = self.lc.started(job, attempt, self.now)
        elif kind == "reject":
            cmds = self.lc.rejected(job, attempt, "full", self.now)
        else:
            if kind == "ok":
                self.ok_payloads.setdefault(job_id, set()).add(payload)
            cmds = self.lc.result(job, attempt, node, kind == "ok", payload, code, "x", self.now)
        self.run(job, cmds)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel(self, data: Any) -> None:
        """The session went away: the job is cancelled wherever it stands."""
        job = data.draw(st.sampled_from(self.jobs))
        ended = job.state.terminal
        self.run(job, self.lc.cancel(job, "session_gone", self.now))
        assert job.state.terminal and (ended or job.state is JobState.CANCELLED)

    @precondition(lambda self: self.armed or self.stale)
    @rule(data=st.data(), stale=st.booleans())
    def fire_timer(self, data: Any, stale: bool) -> None:
        if stale and self.stale:
            # a timer that was disarmed (it raced its cancellation) must change nothing
            job, kind, attempt = data.draw(st.sampled_from(self.stale))
            before = (job.state, job.attempt_id, job.node_id)
            self.run(job, self.lc.timer(job, kind, attempt, self.now))
            assert (job.state, job.attempt_id, job.node_id) == before, (kind, attempt, before)
            return
        if self.armed:
            job_id = data.draw(st.sampled_from(sorted(self.armed)))
            kind, attempt = data.draw(st.sampled_from(self.armed[job_id]))
            self.armed[job_id].remove((kind, attempt))
            job = self.by_id(job_id)
        else:
            return
        self.run(job, self.lc.timer(job, kind, attempt, self.now))

    @rule(node=st.sampled_from(NODES))
    def node_gone(self, node: NodeId) -> None:
        for job in self.jobs:
            self.run(job, self.lc.node_gone(job, node, self.now))

    @invariant()
    def at_most_one_finish_and_order_kept(self) -> None:
        assert all(n == 1 for n in self.finishes.values()), self.finishes
        assert self.delivered == sorted(set(self.delivered))
        assert not self.after_finish_violations, self.after_finish_violations
        for job in self.jobs:
            assert (job.job_id in self.finishes) == job.state.terminal

    def teardown(self) -> None:
        # drive every job to its end the way the shell would: dispatches finish, timers fire
        for _ in range(50):
            if all(j.state.terminal for j in self.jobs):
                break
            while self.to_dispatch:
                job, _node, attempt = self.to_dispatch.pop()
                self.run(job, self.lc.dispatched(job, attempt, True, self.now))
            self.need_select.clear()
            for job_id, timers in list(self.armed.items()):
                job = self.by_id(job_id)
                for kind, attempt in list(timers):
                    self.run(job, self.lc.timer(job, kind, attempt, self.now))
        assert all(j.state.terminal for j in self.jobs)
        assert all(self.finishes.get(j.job_id) == 1 for j in self.jobs)
        assert self.delivered == list(range(len(self.jobs)))
        assert not self.reserved, self.reserved


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
