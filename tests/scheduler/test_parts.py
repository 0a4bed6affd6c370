"""The scheduler's parts in-process: runner, dispatcher and session table, with fake sockets and
the memory store. The same code runs behind uvicorn in the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from linguamesh import protocol as p
from linguamesh.core.ids import JobId, NodeId
from linguamesh.core.jobs import Job
from linguamesh.core.nodes import NodeView
from linguamesh.scheduler.cluster.remote import NoRemote
from linguamesh.scheduler.edge.credentials import NodeCredentials
from linguamesh.scheduler.jobs.dispatch import Dispatcher, HandedOver, Reserved, Unavailable, Written
from linguamesh.scheduler.jobs.jobrun import JobRun
from linguamesh.scheduler.jobs.runner import Runner
from linguamesh.scheduler.nodes.registry import Registry
from linguamesh.scheduler.records import capabilities
from linguamesh.scheduler.service import Scheduler

from ..conftest import SCALE, eventually
from .harness import CAPS, FakeSocket, node, ok_result, say, session, started

Make = Callable[..., Awaitable[Scheduler]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[Scheduler] = []

    async def build(**cfg: Any) -> Scheduler:
        sched = await started(**cfg)
        made.append(sched)
        return sched

    yield build
    for sched in made:
        await sched.stop()


# ---------------------------------------------------------------------- runner


async def test_runner_assign_ack_result_finish(make: Make) -> None:
    sched = await make()
    nc, nsock = await node(sched, "n1")
    s, csock = await session(sched)
    await say(sched, s, 0)
    (assign,) = await nsock.wait("job_assign")
    assert (assign["utterance_index"], assign["attempt_id"], assign["tgt_lang"]) == (0, 1, "es")
    job_id = JobId(assign["job_id"])
    assert sched.runner.runs[job_id].job.state.value == "dispatched"
    assert sched.store.nodes().get(NodeId("n1")).reserved == 1  # type: ignore[union-attr]

    await sched.node_message(nc, p.JobAck(job_id=job_id, attempt_id=1))
    assert sched.runner.runs[job_id].job.state.value == "accepted"
    await sched.node_message(nc, p.JobStarted(job_id=job_id, attempt_id=1))
    await sched.node_message(nc, ok_result(assign))

    (result,) = await csock.wait("translation_result")
    assert (result["status"], result["text_translated"], result["node_id"]) == ("ok", "hola", "n1")
    statuses = [f["status"] for f in csock.of("job_status")]
    assert statuses == ["assigned", "processing"]
    assert [f["seq"] for f in csock.frames] == [1, 2, 3]  # numbered by the history, in order
    (ack,) = await nsock.wait("job_result_ack")
    assert ack == {"type": "job_result_ack", "job_id": job_id, "attempt_id": 1}
    assert job_id not in sched.runner.runs and job_id in sched.runner.finished
    assert not s.life.running
    await eventually(lambda: sched.store.nodes().get(NodeId("n1")).reserved == 0, 2, "slot released")  # type: ignore[union-attr]

    # a copy of the result is acked again and dropped
    await sched.node_message(nc, ok_result(assign, "otra"))
    await nsock.wait("job_result_ack", 2)
    await asyncio.sleep(0.05 * SCALE)
    assert len(csock.of("translation_result")) == 1
    assert sched.metrics.counters.values[("results_duplicate", ())] == 1


async def test_runner_ack_timeout_fails_over_to_another_node(make: Make) -> None:
    sched = await make(ack_timeout=0.1 * SCALE)
    _, sock1 = await node(sched, "n1")
    s, csock = await session(sched)
    await say(sched, s, 0)  # n1 is the only node: it gets attempt 1
    (first,) = await sock1.wait("job_assign")
    n2, sock2 = await node(sched, "n2")  # n1 never acks
    (second,) = await sock2.wait("job_assign", timeout=3)
    assert second["job_id"] == first["job_id"] and second["attempt_id"] == 2
    (cancel,) = await sock1.wait("job_cancel")
    assert (cancel["attempt_id"], cancel["reason"]) == (1, "ack_timeout")
    job = sched.runner.runs[JobId(first["job_id"])].job
    assert job.excluded == {"n1"} and job.node_id == "n2"
    assert sched.store.nodes().get(NodeId("n1")).reserved == 0  # type: ignore[union-attr]
    assert [f["status"] for f in csock.of("job_status")] == ["assigned", "retrying", "assigned"]
    assert sched.metrics.counters.values[("timeouts", ("ack",))] == 1

    await sched.node_message(n2, ok_result(second))
    (result,) = await csock.wait("translation_result")
    assert result["node_id"] == "n2" and result["status"] == "ok"


async def test_runner_stale_attempt_does_not_move_the_job(make: Make) -> None:
    sched = await make(ack_timeout=0.1 * SCALE)
    n1, sock1 = await node(sched, "n1")
    s, _ = await session(sched)
    await say(sched, s, 0)
    (first,) = await sock1.wait("job_assign")
    _, sock2 = await node(sched, "n2")
    await sock2.wait("job_assign", timeout=3)
    # too late: attempt 1 was given up (this raised inside the handler once, dropping the node)
    await sched.node_message(n1, p.JobAck(job_id=first["job_id"], attempt_id=1))
    job = sched.runner.runs[JobId(first["job_id"])].job
    assert (job.state.value, job.attempt_id, job.node_id) == ("dispatched", 2, "n2")


# ---------------------------------------------------------------------- dispatcher


async def test_dispatcher_queue_drains_oldest_first(make: Make) -> None:
    sched = await make(pending_timeout=30)
    s, csock = await session(sched)
    for i in range(3):
        await say(sched, s, i)
    queued = await csock.wait("job_status", 3)
    assert [(f["status"], f["queue_position"], f["reason"]) for f in queued] == [
        ("queued", 1, "no_available_pool"),
        ("queued", 2, "no_available_pool"),
        ("queued", 3, "no_available_pool"),
    ]
    assert len(sched.dispatcher.waiting) == 3
    nc, nsock = await node(sched, "n1", slots=1)
    (a0,) = await nsock.wait("job_assign")
    assert a0["utterance_index"] == 0  # the oldest waiting job goes first
    assert [sched.runner.runs[j].job.utterance_index for j in sched.dispatcher.waiting] == [1, 2]
    await sched.node_message(nc, ok_result(a0))
    a1 = (await nsock.wait("job_assign", 2))[1]
    assert a1["utterance_index"] == 1
    await sched.node_message(nc, ok_result(a1))
    a2 = (await nsock.wait("job_assign", 3))[2]
    assert a2["utterance_index"] == 2
    await sched.node_message(nc, ok_result(a2))
    results = await csock.wait("translation_result", 3)
    assert [r["utterance_index"] for r in results] == [0, 1, 2]
    assert not sched.dispatcher.waiting


async def test_dispatcher_pending_timeout_reports_no_available_node(make: Make) -> None:
    sched = await make(pending_timeout=0.1 * SCALE)
    s, csock = await session(sched)
    await say(sched, s, 0)
    (result,) = await csock.wait("translation_result")
    assert result["status"] == "failed" and result["error"]["code"] == "no_available_node"
    assert not sched.dispatcher.waiting and not sched.runner.runs


class HandingOver(NoRemote):
    """A remote that says another instance (B) holds every node not held here."""

    shared = False

    def __init__(self) -> None:
        self.handed: list[tuple[str, str, dict[str, Any]]] = []

    def node_holder(self, node_id: NodeId) -> str | None:
        return "B"

    async def hand_over(self, holder: str, job_id: JobId, data: dict[str, Any]) -> bool:
        self.handed.append((holder, job_id, data))
        return True


async def test_dispatcher_outcomes_and_hand_over(make: Make) -> None:
    sched = await make()
    s, csock = await session(sched)
    # n1's socket is held by instance B (the remote says so); its slots are in the shared store
    await sched.store.register_node(NodeView(NodeId("n1"), capabilities(CAPS), 2), "B")
    remote = HandingOver()
    c, store, m, tasks, clock = sched.config, sched.store, sched.metrics, sched.tasks, sched.clock
    registry = Registry(c, store, remote, m, tasks, clock, NodeCredentials())
    d = Dispatcher(c, store, remote, m, clock, sched.lifecycle.config, registry)
    runner = Runner(c, store, remote, m, tasks, clock, sched.lifecycle, d, registry, sched.table)

    def job(job_id: str, index: int, tgt: str) -> JobRun:
        audio = b"\0\0" * 1600
        j = Job(JobId(job_id), s.trace_id, s.session_id, index, "en", tgt, ("asr", "nmt", "tts"), audio,
                "pcm16", 16000, 0.1, sched.clock())  # fmt: skip
        s.life.job_added(j.job_id)
        return JobRun(j, tts=True, partials=True)

    # the outcomes one by one: a reserved slot (the memory store has no inboxes, so the
    # reservation hands nothing over), then the node's instance takes the job
    run = job("j0", 0, "es")
    assert await d.select(run) == Reserved(NodeId("n1"))
    assert await d.dispatch(run, NodeId("n1"), 1) == HandedOver("B")
    assert [(h, j) for h, j, _ in remote.handed] == [("B", "j0")]
    data = remote.handed[0][2]
    assert (data["attempt_id"], data["node_id"], data["audio"], data["tgt_lang"]) == (
        1,
        "n1",
        run.job.audio,
        "es",
    )

    # through the runner: it forgets a handed-over job, which stays active in its session
    run = job("j1", 1, "es")
    await runner.start(run, lambda j: runner.lifecycle.created(j, runner.clock()))
    assert run.gone and not run.timers and "j1" not in runner.runs and "j1" not in d.waiting
    assert "j1" in s.life.running and len(remote.handed) == 2
    await asyncio.sleep(0.05 * SCALE)
    assert not csock.of("job_status")  # the new owner reports the job's status

    # no node for the pair: Unavailable, and the job waits in the queue
    other = job("j2", 2, "fr")
    sel = await d.select(other)
    assert isinstance(sel, Unavailable) and (sel.reason, sel.first) == ("no_available_pool", True)
    assert sel.detail == f"no node serves en->fr now; pools: {', '.join(sched.store.nodes().pool_names())}"
    assert list(d.waiting) == ["j2"] and d.queue_position(JobId("j2")) == 1
    assert await d.select(other) == Unavailable("no_available_pool", first=False)  # said once
    d.forget(JobId("j2"))
    assert not d.waiting

    # one instance: a node not held here is held by no one, and the write fails at once
    assert isinstance(sched.dispatcher.remote, NoRemote)
    assert await sched.dispatcher.dispatch(other, NodeId("ghost"), 1) == Written(False)


# ---------------------------------------------------------------------- the session table


async def test_session_table_resume_replays_what_the_client_missed(make: Make) -> None:
    sched = await make()
    nc, nsock = await node(sched, "n1", slots=2)
    s, sock1 = await session(sched)
    await say(sched, s, 0)
    (a0,) = await nsock.wait("job_assign")
    await sched.node_message(nc, ok_result(a0, "uno"))
    await sock1.wait("translation_result")
    seen = sock1.frames[-1]["seq"]
    sched.connection_closed(s, sock1)  # the client drops; results keep coming
    assert s.delivery.conn is None and s.linger_timer is not None
    await say(sched, s, 1)
    a1 = (await nsock.wait("job_assign", 2))[1]
    await sched.node_message(nc, ok_result(a1, "dos"))
    await eventually(lambda: s.delivery.published >= seen + 2, 2, "events of utterance 1 in the history")

    sock2 = FakeSocket()
    info = p.ResumeInfo(session_id=s.session_id, resume_token=s.resume_token, last_seq=seen)
    resumed, replayed = await sched.resume_session(info, sock2)
    assert resumed is s and replayed == 2
    assert sock2.frames[0]["type"] == "session_init_ack" and sock2.frames[0]["replayed"] == 2
    assert [(f["type"], f["seq"]) for f in sock2.frames[1:]] == [
        ("job_status", seen + 1),
        ("translation_result", seen + 2),
    ]
    assert sock2.frames[-1]["text_translated"] == "dos"
    assert s.linger_timer is None

    bad = p.ResumeInfo(session_id=s.session_id, resume_token="wrong", last_seq=0)
    with pytest.raises(p.ProtocolError) as err:
        await sched.resume_session(bad, FakeSocket())
    assert err.value.code is p.ErrorCode.UNAUTHORIZED


async def test_session_table_linger_expiry_cancels_jobs_and_frees_slots(make: Make) -> None:
    sched = await make(session_linger=0.1 * SCALE)
    nc, nsock = await node(sched, "n1")
    s, csock = await session(sched)
    await say(sched, s, 0)
    (assign,) = await nsock.wait("job_assign")
    sched.connection_closed(s, csock)
    (cancel,) = await nsock.wait("job_cancel", timeout=3)
    assert (cancel["job_id"], cancel["reason"]) == (assign["job_id"], "session_gone")
    await eventually(lambda: s.session_id not in sched.sessions, 2, "session dropped")
    assert not sched.runner.runs
    assert sched.runner.finished[JobId(assign["job_id"])].state.value == "cancelled"
    assert sched.store.nodes().get(NodeId("n1")).reserved == 0  # type: ignore[union-attr]
    info = p.ResumeInfo(session_id=s.session_id, resume_token=s.resume_token, last_seq=0)
    with pytest.raises(p.ProtocolError) as err:
        await sched.resume_session(info, FakeSocket())
    assert err.value.code is p.ErrorCode.SESSION_NOT_FOUND
    # the node's late result is acked and dropped
    await sched.node_message(nc, ok_result(assign))
    await nsock.wait("job_result_ack")


async def test_session_table_close_waits_for_running_jobs(make: Make) -> None:
    sched = await make()
    nc, nsock = await node(sched, "n1")
    s, csock = await session(sched)
    await say(sched, s, 0)
    (assign,) = await nsock.wait("job_assign")
    await sched.close_session(s, csock)
    await asyncio.sleep(0.05 * SCALE)
    assert not csock.of("session_closed") and csock.closed is None
    with pytest.raises(p.ProtocolError):
        await say(sched, s, 1)  # closing: no new utterances
    await sched.node_message(nc, ok_result(assign))
    await csock.wait("session_closed")
    assert [f["type"] for f in csock.frames[-2:]] == ["translation_result", "session_closed"]
    await eventually(lambda: csock.closed == (1000, "session closed"), 2, "socket closed")
    assert s.session_id not in sched.sessions


async def test_dispatcher_serves_sessions_round_robin(make: Make) -> None:
    """A session with a backlog does not starve another: the queue is served one job of each
    session in turn, and a new job of another session waits behind no backlog of the first."""
    sched = await make(pending_timeout=30)
    flooder, fsock = await session(sched)
    other, osock = await session(sched)
    for i in range(5):
        await say(sched, flooder, i)
    await say(sched, other, 0)
    d = sched.dispatcher
    order = [(r.job.session_id == other.session_id, r.job.utterance_index) for r in d.fair_order()]
    assert order == [(False, 0), (True, 0), (False, 1), (False, 2), (False, 3), (False, 4)]
    (queued,) = await osock.wait("job_status")
    assert (queued["status"], queued["queue_position"]) == ("queued", 2)
    nc, nsock = await node(sched, "n1", slots=1)
    first = (await nsock.wait("job_assign"))[0]
    assert first["session_id"] == flooder.session_id and first["utterance_index"] == 0
    await sched.node_message(nc, ok_result(first))
    second = (await nsock.wait("job_assign", 2))[1]
    assert second["session_id"] == other.session_id  # not behind the flooder's backlog
    await sched.node_message(nc, ok_result(second))
    await osock.wait("translation_result")
    await fsock.wait("translation_result")
