"""The lifecycle's decisions, value for value: every command of every step, and what each
step writes on the job (times, history, attempts, reasons). Each test walks one branch;
together they pin the core so a changed argument, field or condition fails a test."""

from __future__ import annotations

from linguamesh.core.ids import JobId, NodeId
from linguamesh.core.jobs import Job, JobState
from linguamesh.core.lifecycle import (
    AckResult,
    Arm,
    Assign,
    Cancel,
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

from .test_jobs_and_stages import make_job

#: distinct numbers, so that every product, sum and comparison shows in the results
CFG = LifecycleConfig(
    pending_timeout=11, ack_timeout=7, result_timeout=30, result_timeout_per_audio_second=2, max_attempts=3
)
J = JobId("job-1")
N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")
RESULT_DELAY = 30 + 2 * 3.0  # the job's audio is 3 s long


def new() -> tuple[Lifecycle, Job]:
    return Lifecycle(CFG), make_job(audio_seconds=3.0)


def stale(what: str, attempt: int, state: str) -> Note:
    return Note(J, "job.stale_event", (("what", what), ("attempt_id", attempt), ("state", state)))


def dispatched_on(lc: Lifecycle, job: Job, node: NodeId, t: float = 1.0) -> None:
    lc.selected(job, node, t)
    lc.dispatched(job, job.attempt_id, True, t)


def test_result_deadline_grows_with_the_audio() -> None:
    assert CFG.result_deadline(3.0) == 36.0 and CFG.result_deadline(0.0) == 30.0


def test_created_and_selected() -> None:
    lc, job = new()
    assert lc.created(job, 0.5) == [Arm(J, TimerKind.PENDING, 1, 11), Select(J)]
    assert job.waiting_since == 0.5 and job.history == [(0.5, "created", 1)]
    assert lc.selected(job, N1, 0.75) == [Disarm(J), Assign(J, N1, 1), Status(J, "assigned", N1)]
    assert job.state is JobState.ASSIGNED and job.node_id == N1 and job.assigned_at == 0.75
    assert job.attempt_nodes == {1: N1} and job.history[-1] == (0.75, "assigned", 1)


def test_selection_failed_reports_only_the_first_time() -> None:
    lc, job = new()
    lc.created(job, 0)
    assert lc.selection_failed(job, "no_capacity", True) == [Status(J, "queued", reason="no_capacity")]
    assert job.last_reason == "no_capacity"
    assert lc.selection_failed(job, "excluded", False) == []
    assert job.last_reason == "excluded" and job.state is JobState.CREATED


def test_dispatched_ok_failed_and_stale() -> None:
    lc, job = new()
    lc.created(job, 0)
    lc.selected(job, N1, 1)
    assert lc.dispatched(job, 2, True, 2) == [stale("dispatched", 2, "assigned")]
    assert lc.dispatched(job, 1, True, 2) == [Arm(J, TimerKind.ACK, 1, 7)]
    assert job.state is JobState.DISPATCHED and job.dispatched_at == 2
    assert lc.dispatched(job, 1, True, 3) == [stale("dispatched", 1, "dispatched")]
    lc2, job2 = new()
    lc2.created(job2, 0)
    lc2.selected(job2, N1, 1)
    assert lc2.dispatched(job2, 1, False, 2) == [
        Note(J, "job.dispatch_failed"),
        Disarm(J),
        Release(J, N1, 1),
        Note(J, "job.failover", (("reason", "dispatch_failed"), ("from_node", N1))),
        Status(J, "retrying", reason="dispatch_failed"),
        Arm(J, TimerKind.PENDING, 2, 11),
        Select(J),
    ]
    assert (job2.state, job2.attempt_id, job2.node_id, job2.excluded) == (JobState.CREATED, 2, None, {N1})
    assert job2.waiting_since == 2 and job2.last_reason == "dispatch_failed" and job2.dispatched_at is None


def test_acked_and_started() -> None:
    lc, job = new()
    lc.created(job, 0)
    dispatched_on(lc, job, N1)
    assert lc.acked(job, 2, 2) == [stale("job_ack", 2, "dispatched")]
    assert lc.acked(job, 1, 2) == [Disarm(J), Arm(J, TimerKind.RESULT, 1, RESULT_DELAY)]
    assert job.state is JobState.ACCEPTED and job.history[-1] == (2, "accepted", 1)
    assert lc.acked(job, 1, 3) == [stale("job_ack", 1, "accepted")]
    assert lc.started(job, 2, 3) == [stale("job_started", 2, "accepted")]
    assert lc.started(job, 1, 3) == [Status(J, "processing", N1)]
    assert job.state is JobState.RUNNING
    assert lc.started(job, 1, 4) == [stale("job_started", 1, "running")]


def test_started_without_an_ack_arms_the_result_timer() -> None:
    lc, job = new()
    lc.created(job, 0)
    dispatched_on(lc, job, N2)
    assert lc.started(job, 1, 2) == [
        Disarm(J),
        Arm(J, TimerKind.RESULT, 1, RESULT_DELAY),
        Status(J, "processing", N2),
    ]
    lc2, job2 = new()
    lc2.created(job2, 0)
    assert lc2.started(job2, 1, 1) == [stale("job_started", 1, "created")]


def test_rejected() -> None:
    lc, job = new()
    lc.created(job, 0)
    assert lc.rejected(job, 1, "full", 1) == [stale("job_reject", 1, "created")]  # no node yet
    dispatched_on(lc, job, N1)
    assert lc.rejected(job, 2, "full", 2) == [stale("job_reject", 2, "dispatched")]
    assert lc.rejected(job, 1, "full", 2) == [
        Disarm(J),
        Release(J, N1, 1),
        Note(J, "job.failover", (("reason", "rejected: full"), ("from_node", N1))),
        Status(J, "retrying", reason="rejected: full"),
        Arm(J, TimerKind.PENDING, 2, 11),
        Select(J),
    ]
    assert job.excluded == {N1} and job.attempt_id == 2


def test_a_successful_result_completes_the_job() -> None:
    lc, job = new()
    lc.created(job, 0)
    dispatched_on(lc, job, N1)
    lc.acked(job, 1, 2)
    assert lc.result(job, 1, N1, True, "p", None, None, 3) == [
        AckResult(J, N1, 1),
        Disarm(J),
        Release(J, N1, 1),
        Finish(J, True, N1, "p", None, None),
    ]
    assert job.state is JobState.COMPLETED and job.finished_at == 3 and job.failure_code is None
    # a copy afterwards: acked, noted, nothing else
    assert lc.result(job, 1, N1, True, "p", None, None, 4) == [
        AckResult(J, N1, 1),
        Note(J, "job_result.duplicate", (("attempt_id", 1),)),
    ]


def test_results_from_attempts_that_never_were_are_stale() -> None:
    lc, job = new()
    lc.created(job, 0)
    dispatched_on(lc, job, N1)
    for attempt in (2, 0, -1):
        assert lc.result(job, attempt, N1, True, "p", None, None, 2) == [
            AckResult(J, N1, attempt),
            stale("job_result", attempt, "dispatched"),
        ]
    assert job.state is JobState.DISPATCHED


def test_a_node_error_fails_over_and_the_last_attempt_fails_the_job() -> None:
    lc, job = new()
    lc.created(job, 0)
    for attempt, node in ((1, N1), (2, N2)):
        dispatched_on(lc, job, node, attempt)
        assert lc.result(job, attempt, node, False, None, "node_failed", "boom", attempt + 0.5) == [
            AckResult(J, node, attempt),
            Disarm(J),
            Release(J, node, attempt),
            Note(J, "job.failover", (("reason", "node error: node_failed"), ("from_node", node))),
            Status(J, "retrying", reason="node error: node_failed"),
            Arm(J, TimerKind.PENDING, attempt + 1, 11),
            Select(J),
        ]
    dispatched_on(lc, job, N3, 3)
    assert lc.result(job, 3, N3, False, None, None, "boom", 4) == [
        AckResult(J, N3, 3),
        Disarm(J),
        Release(J, N3, 3),
        Finish(J, False, N3, None, "node_failed", "boom"),
    ]
    assert job.state is JobState.FAILED and job.failure_code == "node_failed" and job.excluded == {N1, N2}


def test_a_non_retryable_error_fails_at_once() -> None:
    for code in ("bad_audio", "audio_too_large", "unsupported_language_pair"):
        lc, job = new()
        lc.created(job, 0)
        dispatched_on(lc, job, N1)
        assert lc.result(job, 1, N1, False, None, code, "no", 2) == [
            AckResult(J, N1, 1),
            Disarm(J),
            Release(J, N1, 1),
            Finish(J, False, N1, None, code, "no"),
        ]


def test_a_failure_of_an_abandoned_attempt_changes_nothing() -> None:
    lc, job = new()
    lc.created(job, 0)
    dispatched_on(lc, job, N1)
    lc.timer(job, TimerKind.ACK, 1, 8)  # attempt 1 given up
    dispatched_on(lc, job, N2, 9)
    assert lc.result(job, 1, N1, False, None, "node_failed", "late", 10) == [
        AckResult(J, N1, 1),
        stale("job_result", 1, "dispatched"),
    ]
    # the right attempt from the wrong node is not the current attempt either
    assert lc.result(job, 2, N1, False, None, "node_failed", "x", 10) == [
        AckResult(J, N1, 2),
        stale("job_result", 2, "dispatched"),
    ]
    assert job.attempt_id == 2 and job.node_id == N2 and job.state is JobState.DISPATCHED


def test_a_late_success_wins_and_cancels_the_current_attempt() -> None:
    lc, job = new()
    lc.created(job, 0)
    dispatched_on(lc, job, N1)
    lc.timer(job, TimerKind.ACK, 1, 8)
    dispatched_on(lc, job, N2, 9)
    assert lc.result(job, 1, N1, True, "late", None, None, 10) == [
        AckResult(J, N1, 1),
        Cancel(J, N2, 2, "superseded"),
        Disarm(J),
        Release(J, N2, 2),
        Finish(J, True, N1, "late", None, None),
    ]


def test_timers() -> None:
    lc, job = new()
    lc.created(job, 0)
    lc.selection_failed(job, "no_capacity", True)
    assert lc.timer(job, TimerKind.PENDING, 2, 11) == [stale("timer.pending", 2, "created")]
    assert lc.timer(job, TimerKind.ACK, 1, 11) == [stale("timer.ack", 1, "created")]
    assert lc.timer(job, TimerKind.PENDING, 1, 11) == [
        Note(J, "job.pending_timeout", (("reason", "no_capacity"),)),
        Disarm(J),
        Finish(J, False, None, None, "no_available_node",
               "no node could take the job within 11s (no_capacity)"),
    ]  # fmt: skip
    assert job.state is JobState.FAILED and job.failure_code == "no_available_node"
    assert lc.timer(job, TimerKind.PENDING, 1, 12) == [stale("timer.pending", 1, "failed")]


def test_a_pending_timeout_without_a_reason_names_the_pool() -> None:
    lc, job = new()
    lc.created(job, 0)
    cmds = lc.timer(job, TimerKind.PENDING, 1, 11)
    assert cmds[0] == Note(J, "job.pending_timeout", (("reason", "no_available_pool"),))


def test_ack_and_result_timeouts_fail_over_with_a_cancel() -> None:
    lc, job = new()
    lc.created(job, 0)
    dispatched_on(lc, job, N1)
    assert lc.timer(job, TimerKind.RESULT, 1, 5) == [stale("timer.result", 1, "dispatched")]
    assert lc.timer(job, TimerKind.ACK, 1, 8) == [
        Note(J, "job.ack_timeout", (("node_id", N1),)),  # names the node: the failover clears it
        Disarm(J),
        Cancel(J, N1, 1, "ack_timeout"),
        Release(J, N1, 1),
        Note(J, "job.failover", (("reason", "ack_timeout"), ("from_node", N1))),
        Status(J, "retrying", reason="ack_timeout"),
        Arm(J, TimerKind.PENDING, 2, 11),
        Select(J),
    ]
    dispatched_on(lc, job, N2, 9)
    lc.acked(job, 2, 9)
    assert lc.timer(job, TimerKind.ACK, 2, 10) == [stale("timer.ack", 2, "accepted")]
    assert lc.timer(job, TimerKind.RESULT, 2, 45) == [
        Note(J, "job.result_timeout", (("node_id", N2),)),
        Disarm(J),
        Cancel(J, N2, 2, "result_timeout"),
        Release(J, N2, 2),
        Note(J, "job.failover", (("reason", "result_timeout"), ("from_node", N2))),
        Status(J, "retrying", reason="result_timeout"),
        Arm(J, TimerKind.PENDING, 3, 11),
        Select(J),
    ]
    dispatched_on(lc, job, N3, 46)
    lc.started(job, 3, 46)
    assert lc.timer(job, TimerKind.RESULT, 3, 90) == [
        Note(J, "job.result_timeout", (("node_id", N3),)),
        Disarm(J),
        Cancel(J, N3, 3, "result_timeout"),
        Release(J, N3, 3),
        Disarm(J),  # the end disarms again: harmless, timers are gone already
        Finish(J, False, N3, None, "timeout", "gave up after 3 attempts; last: result_timeout"),
    ]


def test_node_gone() -> None:
    lc, job = new()
    lc.created(job, 0)
    assert lc.node_gone(job, N1, 1) == []  # waiting for a node: nothing to do
    dispatched_on(lc, job, N1)
    assert lc.node_gone(job, N2, 2) == []  # another node
    assert lc.node_gone(job, N1, 2) == [
        Note(J, "job.node_lost", (("node_id", N1),)),
        Disarm(J),
        Release(J, N1, 1),
        Note(J, "job.failover", (("reason", "node_lost"), ("from_node", N1))),
        Status(J, "retrying", reason="node_lost"),
        Arm(J, TimerKind.PENDING, 2, 11),
        Select(J),
    ]
    lc.cancel(job, "session_gone", 3)
    assert lc.node_gone(job, N1, 4) == []  # ended


def test_cancel_while_waiting_and_while_running() -> None:
    lc, job = new()
    lc.created(job, 0)
    assert lc.cancel(job, "session_gone", 1) == [
        Disarm(J),
        Finish(J, False, None, None, "cancelled", "session_gone"),
    ]
    assert job.state is JobState.CANCELLED and job.finished_at == 1
    lc2, job2 = new()
    lc2.created(job2, 0)
    dispatched_on(lc2, job2, N1)
    assert lc2.cancel(job2, "closing", 2) == [
        Disarm(J),
        Cancel(J, N1, 1, "closing"),
        Release(J, N1, 1),
        Finish(J, False, N1, None, "cancelled", "closing"),
    ]


def test_every_step_writes_its_time_into_the_history() -> None:
    lc, job = new()
    lc.created(job, 0)
    dispatched_on(lc, job, N1, 1)  # assigned and dispatched at 1
    lc.started(job, 1, 2)  # running at 2, without an ack
    lc.rejected(job, 1, "full", 3)  # back to created at 3
    dispatched_on(lc, job, N2, 4)
    lc.acked(job, 2, 5)
    lc.node_gone(job, N2, 6)
    dispatched_on(lc, job, N3, 7)
    lc.result(job, 3, N3, False, None, "bad_audio", "x", 8)
    assert job.history == [
        (0, "created", 1),
        (1, "assigned", 1),
        (1, "dispatched", 1),
        (2, "running", 1),
        (3, "created", 1),
        (4, "assigned", 2),
        (4, "dispatched", 2),
        (5, "accepted", 2),
        (6, "created", 2),
        (7, "assigned", 3),
        (7, "dispatched", 3),
        (8, "failed", 3),
    ]  # fmt: skip  (the return to created is recorded under the attempt that ended)
    assert job.finished_at == 8 and job.waiting_since == 6


def test_the_last_attempt_ends_with_the_code_of_what_happened() -> None:
    """A reject, a lost node or a failed write on the last attempt fails the job with
    node_failed; a timeout with timeout; each at the time it happened."""
    for step, code in (
        (lambda lc, job: lc.rejected(job, 3, "full", 9), "node_failed"),
        (lambda lc, job: lc.node_gone(job, N3, 9), "node_failed"),
        (lambda lc, job: lc.timer(job, TimerKind.ACK, 3, 9), "timeout"),
    ):
        lc, job = new()
        lc.created(job, 0)
        for attempt, node in ((1, N1), (2, N2)):
            dispatched_on(lc, job, node, attempt)
            lc.node_gone(job, node, attempt + 0.5)
        dispatched_on(lc, job, N3, 3)
        fin = step(lc, job)[-1]
        assert isinstance(fin, Finish) and (fin.ok, fin.error_code) == (False, code)
        assert job.finished_at == 9 and job.failure_code == code
    lc, job = new()
    lc.created(job, 0)
    for attempt, node in ((1, N1), (2, N2), (3, N3)):
        lc.selected(job, node, attempt)
        cmds = lc.dispatched(job, attempt, False, attempt + 0.5)
    assert cmds[-1] == Finish(
        J, False, N3, None, "node_failed", "gave up after 3 attempts; last: dispatch_failed"
    )
    assert job.finished_at == 3.5
    lc, job = new()
    lc.created(job, 0)
    lc.timer(job, TimerKind.PENDING, 1, 11)
    assert job.finished_at == 11


def test_a_node_error_and_a_result_timeout_record_their_time_too() -> None:
    lc, job = Lifecycle(LifecycleConfig(max_attempts=5)), make_job(audio_seconds=3.0)
    lc.created(job, 0)
    dispatched_on(lc, job, N1, 1)
    lc.result(job, 1, N1, False, None, "node_failed", "x", 2)
    dispatched_on(lc, job, N2, 3)
    lc.acked(job, 2, 4)
    lc.timer(job, TimerKind.RESULT, 2, 5)
    assert job.history[-1] == (5, "created", 2) and (2, "created", 1) in job.history
    assert job.waiting_since == 5 and job.attempt_id == 3
