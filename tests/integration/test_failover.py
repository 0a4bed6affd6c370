"""Failure paths: no node, dead node, mute node, late and duplicate results, resume."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, eventually, late_events, pcm, receive_until, test_engines, until_result
from ..procs import node_process
from ..scripted_node import ScriptedNode


async def test_no_node_gives_failed_result_with_no_available_node(cluster: Cluster) -> None:
    s = await cluster.scheduler(pending_timeout=0.5)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        status = await c.recv(5 * SCALE)
        assert isinstance(status, p.JobStatus) and status.status == "queued"
        assert status.reason == "no_available_pool" and status.queue_position == 1
        assert status.detail == "no node serves en->es now; no node is connected"
        r = await c.next_result(5 * SCALE)
    assert r.status == "failed"
    assert r.error is not None and r.error.code == "no_available_node"
    assert "no_available_pool" in r.error.message


async def test_a_target_no_node_serves_is_said_when_the_session_opens_and_resumes(cluster: Cluster) -> None:
    s = await cluster.scheduler(pending_timeout=3)
    async with SessionClient(s.url, src="en", tgt="es", extra_tgt_langs=["de"]) as c:
        assert c.ack is not None
        es, de = c.ack.warnings  # no node at all yet: one per target
        assert es.code == de.code == "no_available_node"
        assert es.message.startswith(
            "no node serves en->es now; no node is connected. Its utterances wait up to 3 s"
        )
        assert de.message.startswith("no node serves en->de now")
    await cluster.node(s.url, "fr-es-node", engines=test_engines())  # en, es, fr: not de
    async with SessionClient(s.url, src="en", tgt="es", extra_tgt_langs=["de", "fr"]) as c:
        assert c.ack is not None
        assert [(w.code, w.message.split(".")[0]) for w in c.ack.warnings] == [
            ("no_available_node", "no node serves en->de now; pools: en-es-fr")
        ]
        await c.send_utterance(0, pcm(0.2))
        results = await c.results(3, 10 * SCALE)  # what the warning said: es and fr served, de not
        await c.resume()
        assert len(c.ack.warnings) == 1  # on a resume too
    assert sorted((r.tgt_lang, r.status) for r in results) == [("de", "failed"), ("es", "ok"), ("fr", "ok")]
    async with SessionClient(s.url, src="en", tgt="es") as fine:
        assert fine.ack is not None and fine.ack.warnings == []


async def test_queued_job_is_served_when_a_node_arrives(cluster: Cluster) -> None:
    s = await cluster.scheduler(pending_timeout=5)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        status = await c.recv(5 * SCALE)
        assert isinstance(status, p.JobStatus) and status.status == "queued"
        await cluster.node(s.url)
        r = await c.next_result(5 * SCALE)
    assert r.status == "ok"


async def test_node_killed_mid_job_fails_over_to_another_node(cluster: Cluster, tmp_path: Path) -> None:
    s = await cluster.scheduler()
    proc = node_process(s.url, "doomed", tmp_path, delay_ms=2000, slots=2).proc
    try:
        await eventually(lambda: "doomed" in s.sched.nodes, 15, "node process to register")
        await cluster.node(s.url, "survivor")
        async with SessionClient(s.url, src="en", tgt="es", preferred_node_id="doomed") as c:
            await c.send_utterance(0, pcm(0.2))
            await eventually(
                lambda: any(j.state.value == "running" for j in s.sched.jobs.values()), 5, "job running"
            )
            os.kill(proc.pid, signal.SIGKILL)
            events = await receive_until(c, until_result())
    finally:
        proc.kill()
        proc.wait()
    r = events[-1]
    assert r.status == "ok" and r.node_id == "survivor"
    retrying = [e for e in events if isinstance(e, p.JobStatus) and e.status == "retrying"]
    assert retrying and retrying[0].reason == "node_lost"
    job = s.sched.job_view(r.job_id)
    assert job is not None and job["attempt_id"] == 2 and job["excluded_nodes"] == ["doomed"]


async def test_node_that_never_acks_is_failed_over_after_ack_timeout(cluster: Cluster) -> None:
    s = await cluster.scheduler(ack_timeout=0.3)
    mute = ScriptedNode(s.url, "mute")
    await mute.connect()
    try:
        await cluster.node(s.url, "good")
        async with SessionClient(s.url, src="en", tgt="es", preferred_node_id="mute") as c:
            await c.send_utterance(0, pcm(0.2))
            assign = await mute.expect(p.JobAssign)
            r = await c.next_result(5 * SCALE)
        cancel = await mute.expect(p.JobCancel)
    finally:
        await mute.close()
    assert r.status == "ok" and r.node_id == "good"
    assert cancel.job_id == assign.job_id and cancel.reason == "ack_timeout"
    assert s.sched.metrics.value("timeouts", kind="ack") == 1


async def test_late_result_after_failover_and_duplicate_result_give_one_translation(cluster: Cluster) -> None:
    s = await cluster.scheduler(result_timeout=0.3)
    slow = ScriptedNode(s.url, "slow")
    await slow.connect()
    try:
        await cluster.node(s.url, "backup", engines=test_engines(delay_ms=150))
        async with SessionClient(s.url, src="en", tgt="es", preferred_node_id="slow") as c:
            await c.send_utterance(0, pcm(0.2))
            assign = await slow.expect(p.JobAssign)
            await slow.send(p.JobAck(job_id=assign.job_id, attempt_id=assign.attempt_id))
            # no result within result_timeout: the scheduler cancels and fails over to "backup"
            await slow.expect(p.JobCancel, 5)
            # the late result of attempt 1 arrives while attempt 2 runs: it wins
            await slow.send(slow.result_for(assign, "late"))
            await slow.send(slow.result_for(assign, "late"))  # and a duplicate
            r = await c.next_result(5 * SCALE)
            # backup's own result comes later and must not produce a second translation
            extra = await late_events(c, wait=0.5)
        acks = [m for m in slow.received if isinstance(m, p.JobResultAck)]
    finally:
        await slow.close()
    assert r.status == "ok" and r.text_asr == "late" and r.node_id == "slow"
    assert not [e for e in extra if isinstance(e, p.TranslationResult)]
    assert len(acks) == 2  # every copy is acked so the node can forget it
    assert s.sched.metrics.value("results_duplicate") >= 1


async def test_no_timeout_fires_after_the_result_arrived(cluster: Cluster) -> None:
    s = await cluster.scheduler(ack_timeout=0.2, result_timeout=0.3)
    await cluster.node(s.url, engines=test_engines(delay_ms=20))
    async with SessionClient(s.url, src="en", tgt="es") as c:
        for i in range(5):
            await c.send_utterance(i, pcm(0.05))
        results = await c.results(5, timeout=5 * SCALE)
    await asyncio.sleep(1.0 * SCALE)  # well past every timeout
    assert all(r.status == "ok" for r in results)
    assert s.sched.metrics.value("timeouts") == 0
    assert s.sched.metrics.value("failovers") == 0
    for r in results:
        job = s.sched.job_view(r.job_id)
        assert job is not None and job["history"][-1]["state"] == "completed"


async def test_resume_after_disconnect_gets_missed_results_once(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, engines=test_engines(delay_ms=100))
    c = SessionClient(s.url, src="en", tgt="es")
    await c.connect()
    for i in range(3):
        await c.send_utterance(i, pcm(0.1))
    first = await c.recv(5 * SCALE)  # see at least one event, then drop the connection
    assert first.seq == 1
    await c.disconnect()
    await eventually(lambda: s.sched.metrics.value("results_emitted") == 3, 10, "jobs to finish")
    replayed = await c.resume()
    assert replayed >= 3
    results = await c.results(3, timeout=5 * SCALE)
    await c.disconnect()
    assert [r.utterance_index for r in results] == [0, 1, 2]
    assert c.duplicates_dropped == 0
    assert s.sched.metrics.value("sessions_resumed") == 1


async def test_resume_while_jobs_still_run_then_live_results(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, engines=test_engines(delay_ms=150), max_concurrent_jobs=1)
    c = SessionClient(s.url, src="en", tgt="es")
    await c.connect()
    for i in range(4):
        await c.send_utterance(i, pcm(0.1))
    await c.disconnect()
    await eventually(lambda: s.sched.metrics.value("results_emitted") >= 1, 10, "a first result")
    await c.resume()
    results = await c.results(4, timeout=10 * SCALE)
    await c.disconnect()
    assert [r.utterance_index for r in results] == [0, 1, 2, 3]
    assert c.duplicates_dropped == 0


async def test_resume_with_wrong_token_or_unknown_session_is_refused(cluster: Cluster) -> None:
    from linguamesh.client import ClientError

    s = await cluster.scheduler()
    c = SessionClient(s.url, src="en", tgt="es")
    await c.connect()
    await c.disconnect()
    assert c.ack is not None
    c.ack.resume_token = "wrong"
    try:
        await c.resume()
    except ClientError as exc:
        assert exc.code == "unauthorized"
    else:
        raise AssertionError("resume with a wrong token must fail")
    c.ack.session_id = "s-NOPE"
    try:
        await c.resume()
    except ClientError as exc:
        assert exc.code == "session_not_found"
    else:
        raise AssertionError("resume of an unknown session must fail")
