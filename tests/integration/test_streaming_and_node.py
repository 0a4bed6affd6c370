"""audio_chunk streaming, session_close, and the node agent's own guarantees."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.audio import to_wav
from linguamesh.client import SessionClient

from ..conftest import (
    SCALE,
    Cluster,
    eventually,
    free_port,
    of,
    pcm,
    receive_until,
    start_node,
    test_engines,
    until_result,
)
from ..scripted_node import ScriptedNode, accept_node, assign


async def test_audio_chunks_close_utterances_on_final_max_length_and_idle_gap(cluster: Cluster) -> None:
    s = await cluster.scheduler(chunk_idle_gap=0.2, max_utterance_seconds=1.0)
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        # utterance 0: three chunks, closed by is_final
        for seq, final in ((0, False), (1, False), (2, True)):
            await c.send_chunk(seq, pcm(0.1), is_final=final)
        # utterance 1: 1.2 s streamed, cut at the 1 s maximum (no pause in a steady tone; at
        # the 30 ms frame before it); the rest starts utterance 2
        for seq in range(3, 9):
            await c.send_chunk(seq, pcm(0.2))
        # utterance 2 is then closed by the idle gap (0.2 s without chunks)
        await c.send_chunk(8, pcm(0.2))  # a repeated seq is ignored
        results = await c.results(3, timeout=5 * SCALE)
    assert [r.utterance_index for r in results] == [0, 1, 2]
    assert results[0].text_asr == "Test utterance 0.30."
    assert results[1].text_asr == "Test utterance 0.99."
    assert results[2].text_asr == "Test utterance 0.21."


async def test_streamed_speech_longer_than_the_limit_is_cut_in_a_pause_and_the_client_told(
    cluster: Cluster,
) -> None:
    s = await cluster.scheduler(chunk_idle_gap=0.3, max_utterance_seconds=1.5)
    await cluster.node(s.url)
    silence = b"\0\0" * int(0.3 * 16000)
    speech = pcm(0.5) + silence + pcm(0.5) + silence[: 2 * int(0.2 * 16000)] + pcm(0.5)  # 2.0 s
    async with SessionClient(s.url, src="en", tgt="es") as c:
        step = 2 * int(0.1 * 16000)  # 100 ms chunks
        for seq, at in enumerate(range(0, len(speech), step)):
            await c.send_chunk(seq, speech[at : at + step])
        events = await receive_until(c, until_result(2), 10, "both parts' results")
    results = of(events, p.TranslationResult)
    first, rest = (float(r.text_asr.split()[-1].rstrip(".")) for r in results)
    assert 1.3 <= first <= 1.5, first  # cut in the pause at 1.3-1.5 s, not at the 1.5 s limit
    assert abs(first + rest - 2.0) < 0.05  # nothing lost, nothing doubled
    told = [e for e in of(events, p.JobStatus) if e.reason and e.reason.startswith("split")]
    assert [e.utterance_index for e in told] == [0] and "utterance 1" in (told[0].reason or "")


async def test_session_close_waits_for_running_jobs_then_closes(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, engines=test_engines(delay_ms=50))
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.1))
        await c.close_session()
        events = []
        with pytest.raises(ConnectionClosed) as closed:  # the scheduler closes the socket at the end
            while True:
                events.append(await c.recv(5 * SCALE))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["JobStatus", "TranslationResult", "SessionClosed"] or (
        "TranslationResult" in kinds
        and kinds[-1] == "SessionClosed"
        and kinds.count("TranslationResult") == 1
    ), kinds
    await eventually(lambda: not s.sched.sessions, 2, "session to be dropped")


async def test_node_really_stops_a_cancelled_job(cluster: Cluster) -> None:
    s = await cluster.scheduler(result_timeout=0.3)
    slow = await cluster.node(s.url, "slow", engines=test_engines(asr_delay_ms=3000))
    async with SessionClient(s.url, src="en", tgt="es", preferred_node_id="slow") as c:
        await c.send_utterance(0, pcm(0.1))
        await eventually(lambda: bool(slow.agent.running), 5, "job to start on the node")
        # result timeout -> job_cancel -> the node's task is cancelled, no result is produced
        await eventually(lambda: slow.agent.metrics.value("node_jobs_cancelled") == 1, 5, "cancel")
        await eventually(lambda: not slow.agent.running, 1, "task to end")
        assert not slow.agent.unacked and slow.agent.metrics.value("node_jobs_finished") == 0
        await cluster.node(s.url, "fast")
        r = await c.next_result(10 * SCALE)
    assert r.node_id == "fast"


async def test_node_keeps_results_until_acked_and_resends_after_reconnect() -> None:
    """A scripted scheduler drops the connection instead of acking; the node must resend."""
    port = free_port()
    registrations: list[p.NodeRegister] = []
    results: list[p.JobResult] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        registrations.append(await accept_node(ws))
        if len(registrations) == 1:
            await ws.send(p.encode_str(assign("job-X", audio=pcm(0.1))))
            async for frame in ws:
                msg = p.decode_node(frame)
                if isinstance(msg, p.JobResult):
                    results.append(msg)
                    await ws.close()  # no job_result_ack
                    return
        else:
            async for frame in ws:
                msg = p.decode_node(frame)
                if isinstance(msg, p.JobResult):
                    results.append(msg)
                    await ws.send(p.encode_str(p.JobResultAck(job_id=msg.job_id, attempt_id=msg.attempt_id)))
                    done.set()

    async with serve(handler, "127.0.0.1", port):
        node = await start_node(f"ws://127.0.0.1:{port}", "keeper")
        try:
            await asyncio.wait_for(done.wait(), 10 * SCALE)
            await eventually(lambda: not node.agent.unacked, 2, "ack to clear the kept result")
        finally:
            await node.stop()
    assert len(registrations) == 2
    assert registrations[1].unacked_results == ["job-X"]
    assert [r.job_id for r in results] == ["job-X", "job-X"] and results[0] == results[1]


async def test_heartbeat_loss_drops_the_node_and_fails_over(cluster: Cluster) -> None:
    s = await cluster.scheduler(heartbeat_interval=0.2)
    silent = ScriptedNode(s.url, "silent")
    await silent.connect()
    assert silent._beat is not None
    silent._beat.cancel()  # stops heartbeating but keeps the socket open
    try:
        await cluster.node(s.url, "alive")
        async with SessionClient(s.url, src="en", tgt="es", preferred_node_id="silent") as c:
            await c.send_utterance(0, pcm(0.1))
            assign = await silent.expect(p.JobAssign)
            await silent.send(p.JobAck(job_id=assign.job_id, attempt_id=assign.attempt_id))
            r = await c.next_result(10 * SCALE)
    finally:
        await silent.close()
    assert r.status == "ok" and r.node_id == "alive"
    assert "silent" not in s.sched.nodes


async def test_translate_cli_prints_text_and_writes_speech(cluster: Cluster, tmp_path: Path) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, engines=test_engines(text="good morning"))
    wav = tmp_path / "in.wav"
    t = np.arange(8000, dtype=np.float32) / 16000
    wav.write_bytes(to_wav(0.1 * np.sin(2 * np.pi * 300 * t), 16000))
    out = tmp_path / "out.wav"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "linguamesh.cli", "translate", str(wav), "--from", "en", "--to", "es",
        "--out", str(out), "--url", s.url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30 * SCALE)
    assert proc.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "transcript (en): Good morning." in text
    assert "translation (es): [es] Good morning." in text
    assert out.read_bytes()[:4] == b"RIFF"
    job = next(iter(s.sched.runner.finished.values()))
    assert f"trace {job.trace_id} job {job.job_id}" in stderr.decode()


async def test_translate_cli_reports_errors_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "linguamesh.cli", "translate", str(bad), "--from", "en", "--to", "es",
        "--url", f"ws://127.0.0.1:{free_port()}",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 30 * SCALE)
    assert proc.returncode == 2 and b"not a readable WAV file" in stderr
    good = tmp_path / "good.wav"
    good.write_bytes(to_wav(np.zeros(1600, dtype=np.float32), 16000))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "linguamesh.cli", "translate", str(good), "--from", "en", "--to", "es",
        "--url", f"ws://127.0.0.1:{free_port()}",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 30 * SCALE)
    assert proc.returncode == 2 and b"cannot reach the scheduler" in stderr
