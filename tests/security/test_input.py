"""Odd frames get coded errors, fast, and nothing else breaks."""

from __future__ import annotations

import asyncio
import json
import time

from websockets.asyncio.client import connect

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, pcm
from ..scripted_node import ScriptedNode

INIT = json.dumps({"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "es"})


async def _event(ws, kind: type = p.Error, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    while True:
        ev = p.decode_event(await asyncio.wait_for(ws.recv(), timeout * SCALE))
        if isinstance(ev, kind):
            return ev


def deep(depth: int) -> str:
    return '{"type":"ack","seq":1,"x":' + "[" * depth + "]" * depth + "}"


async def test_deeply_nested_frames_are_refused_fast_and_nobody_stalls(cluster: Cluster) -> None:
    """Finding 4: 1,100 nested arrays inside a valid ack, after session_init: a coded
    bad_message, the socket stays, and another client is served meanwhile."""
    s = await cluster.scheduler()
    node = ScriptedNode(s.url, "n1")
    await node.connect()
    async with connect(s.url + "/ws/session", max_size=None) as ws:
        await ws.send(INIT)
        await _event(ws, p.SessionInitAck)
        cpu = time.process_time()
        for depth in (1_100, 100_000):
            await ws.send(deep(depth))
            err = await _event(ws)
            assert err.code == "bad_message" and "deep" in err.message, err
        spent = time.process_time() - cpu
        print(f"\n2 deep frames refused, {spent * 1000:.2f} ms of CPU in this process (server included)")
        await ws.send(json.dumps({"type": "ack", "seq": 0}))  # still open and answering
        await ws.send(p.encode_str(p.Utterance(utterance_index=0, audio=pcm(0.2))))
        job = await node.expect(p.JobAssign)
        await node.send(node.result_for(job))
        assert (await _event(ws, p.TranslationResult)).status == "ok"
    await node.close()


async def test_lesser_cases_get_coded_errors(cluster: Cluster) -> None:
    """Finding 8: sample_rate 0, a negative chunk seq, an oversized frame, huge capability
    lists and slot counts are refused with codes, each on a socket that stays open."""
    s = await cluster.scheduler(max_message_bytes=256 * 1024, max_capability_entries=500, max_node_slots=64)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        assert c.ws is not None
        await c.send(p.Utterance(utterance_index=0, audio=pcm(0.1), sample_rate=0))
        err = await c.recv(5 * SCALE)
        assert isinstance(err, p.Error) and err.code == "bad_message" and "sample_rate" in err.message
        await c.send(p.AudioChunk(seq=-1, audio=pcm(0.1)))
        err = await c.recv(5 * SCALE)
        assert isinstance(err, p.Error) and err.code == "bad_message" and "seq" in err.message
        await c.ws.send(
            json.dumps({"type": "ack", "seq": 0, "pad": "x" * (300 * 1024)})
        )  # > limit, < limit + 64 KB
        err = await c.recv(5 * SCALE)
        assert isinstance(err, p.Error) and err.code == "audio_too_large", err
        await c.send(p.Ack(seq=0))
    caps = {"asr_languages": [f"l{i}" for i in range(10_000)]}
    for fields, needle in (
        ({"capabilities": caps}, "asr_languages"),
        ({"capabilities": {}, "max_concurrent_jobs": 10**12}, "max_concurrent_jobs"),
        ({"capabilities": {"tts_languages": ["x" * 100]}}, "too long"),
    ):
        async with connect(s.url + "/ws/node", max_size=None) as ws:
            reg = {"type": "node_register", "protocol_version": 1, "node_id": "n9", "version": "t", **fields}
            await ws.send(json.dumps(reg))
            err = p.decode_to_node(await ws.recv())
            assert isinstance(err, p.Error) and err.code == "bad_message" and needle in err.message, err
            await ws.send(
                json.dumps({**reg, "capabilities": {"asr_languages": ["en"]}, "max_concurrent_jobs": 2})
            )
            assert isinstance(p.decode_to_node(await ws.recv()), p.NodeRegisterAck)
