"""Who may speak for a job, who may register as which
node, and a late answer that once dropped a node's socket. Real scheduler, real
sockets, hand-written nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, late_events, pcm
from ..procs import run_cli
from ..scripted_node import ScriptedNode

TOKENS = {"n1": "n1-own-token-0123456789", "n2": "n2-own-token-0123456789"}


def tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "node-tokens"
    path.write_text("# node_id token\n" + "".join(f"{n} {t}\n" for n, t in TOKENS.items()))
    return str(path)


async def test_only_the_assigned_node_may_answer_for_a_job(cluster: Cluster) -> None:
    """Finding 1: n2 answering n1's job is refused (not_assigned, counted); the client gets
    n1's real result, once."""
    s = await cluster.scheduler()
    n1 = ScriptedNode(s.url, "n1", slots=1)
    await n1.connect()
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        job = await n1.expect(p.JobAssign)
        await n1.send(p.JobAck(job_id=job.job_id, attempt_id=job.attempt_id))
        n2 = ScriptedNode(s.url, "n2", slots=1)
        await n2.connect()
        forged = n2.result_for(job, "forged")
        for msg in (
            forged,
            p.JobAck(job_id=job.job_id, attempt_id=1),
            p.JobStarted(job_id=job.job_id, attempt_id=1),
            p.JobPartial(job_id=job.job_id, attempt_id=1, stage="asr", text="forged"),
            p.JobResult(job_id=job.job_id, attempt_id=2, success=True, text_translated="forged"),
        ):
            await n2.send(msg)
            err = await n2.expect(p.Error)
            assert err.code == "not_assigned" and err.ref == job.job_id, err
        assert s.sched.runner.runs[job.job_id].job.state.value == "accepted"  # type: ignore[index]
        await n1.send(n1.result_for(job, "real"))
        result = await c.next_result(10 * SCALE)
        assert result.status == "ok" and result.text_asr == "real" and result.node_id == "n1"
        assert not [e for e in await late_events(c) if isinstance(e, (p.TranslationResult, p.AsrPartial))]
        # after the end too: a forged copy gets no ack, the real node's copy does
        await n2.send(forged)
        assert (await n2.expect(p.Error)).code == "not_assigned"
        await n1.send(n1.result_for(job, "real"))
        await n1.expect(p.JobResultAck)
        assert not any(isinstance(m, p.JobResultAck) for m in n2.received)
    refused = s.sched.metrics.counters.values
    assert sum(v for (name, _), v in refused.items() if name == "node_messages_refused") == 6
    await n1.close()
    await n2.close()


async def test_a_late_ack_for_a_retried_attempt_keeps_the_node(cluster: Cluster) -> None:
    """Finding 5: n1 acks attempt 1 after it was given up and retried on n2; n1 used to be
    dropped by a TypeError in the handler. It stays connected and keeps serving."""
    s = await cluster.scheduler(ack_timeout=0.3, pending_timeout=10)
    n1 = ScriptedNode(s.url, "n1", slots=1)
    await n1.connect()
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        first = await n1.expect(p.JobAssign)
        n2 = ScriptedNode(s.url, "n2", slots=1)
        await n2.connect()
        second = await n2.expect(p.JobAssign, 5)
        assert second.attempt_id == 2
        await n1.send(p.JobAck(job_id=first.job_id, attempt_id=1))  # too late
        await n1.send(n1.result_for(first, "late"))  # a late *result* of attempt 1 still wins
        result = await c.next_result(5 * SCALE)
        assert result.text_asr == "late" and result.node_id == "n1"
        await n1.expect(p.JobResultAck)
        assert "n1" in s.sched.nodes  # still connected
        await n2.close()
        await c.send_utterance(1, pcm(0.2))
        job = await n1.expect(p.JobAssign, 5)
        await n1.send(n1.result_for(job, "next"))
        assert (await c.next_result(5 * SCALE)).text_asr == "next"
    await n1.close()


async def test_per_node_tokens_bind_a_node_to_its_id(cluster: Cluster, tmp_path: Path) -> None:
    """Finding 2 and 3 with --node-tokens: each node registers only under its own id."""
    s = await cluster.scheduler(node_tokens=tokens_file(tmp_path))
    for node_id, token in (("n1", None), ("n1", TOKENS["n2"]), ("n3", TOKENS["n1"]), ("n1", "x" * 20)):
        rogue = ScriptedNode(s.url, node_id, token=token)
        err = await rogue.register()
        assert isinstance(err, p.Error) and err.code == "unauthorized", (node_id, err)
        assert rogue.ws is not None
        with pytest.raises(ConnectionClosed):
            await rogue.ws.recv()
    n1 = ScriptedNode(s.url, "n1", token=TOKENS["n1"])
    await n1.connect()
    # the same node with its own token replaces a connection it lost track of
    again = ScriptedNode(s.url, "n1", token=TOKENS["n1"])
    await again.connect()
    await n1.closed(5)
    assert "n1" in s.sched.nodes
    await again.close()
    await n1.close()


async def test_no_node_id_takeover_with_a_shared_token(cluster: Cluster) -> None:
    """Finding 3: a second registration of a live id with only the shared token is refused;
    the real node keeps its socket and its jobs."""
    s = await cluster.scheduler(node_token="shared-token")
    real = ScriptedNode(s.url, "n1", slots=1, token="shared-token")
    await real.connect()
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        job = await real.expect(p.JobAssign)
        impostor = ScriptedNode(s.url, "n1", token="shared-token")
        err = await impostor.register()
        assert isinstance(err, p.Error) and err.code == "node_id_in_use"
        await real.send(real.result_for(job, "real"))
        result = await c.next_result(5 * SCALE)
        assert result.status == "ok" and result.text_asr == "real"
        await c.send_utterance(1, pcm(0.2))
        nxt = await real.expect(p.JobAssign, 5)  # the next job goes to the real node
        await real.send(real.result_for(nxt))
        await c.next_result(5 * SCALE)
    await real.close()


def test_an_exposed_scheduler_without_node_credentials_does_not_start(tmp_path: Path) -> None:
    """Finding 2: bound off loopback with no node credentials, the scheduler exits at once
    (it never binds); the message names --insecure. A broken tokens file names its line."""
    out = run_cli("scheduler", "--port", "1", "--host", "0.0.0.0")
    assert out.returncode == 2, out
    assert "--insecure" in out.stderr and "--node-token" in out.stderr
    bad = tmp_path / "tokens"
    bad.write_text("n1 a-token-long-enough-000\nn2\n")
    out = run_cli("scheduler", "--port", "1", "--node-tokens", str(bad))
    assert out.returncode == 2 and f"{bad}:2" in out.stderr, out
