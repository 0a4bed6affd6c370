"""Streaming with hostile or odd input: what a client may ask for, what a
node may claim about a streamed utterance, and the exact audio a streaming node gets."""

from __future__ import annotations

import json

from websockets.asyncio.client import connect

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, pcm
from ..scripted_node import ScriptedNode
from .test_input import _event


async def _refused_init(url: str, extra: dict[str, object], needle: str) -> None:
    """A ``session_init`` with ``extra`` fields gets ``bad_message`` naming ``needle``."""
    async with connect(url + "/ws/session") as ws:
        init = {"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "es", **extra}
        await ws.send(json.dumps(init))
        err = await _event(ws)
        assert err.code == "bad_message" and needle in err.message, err


async def test_bad_end_of_speech_settings_get_coded_errors(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    for extra, needle in (
        ({"end_of_speech": "server", "end_of_speech_ms": 10}, "end_of_speech_ms"),
        ({"end_of_speech": "sometimes"}, "end_of_speech"),
        ({"end_of_speech": "server", "end_of_speech_ms": "soon"}, "end_of_speech_ms"),
    ):
        await _refused_init(s.url, extra, needle)


async def test_a_streaming_node_gets_every_piece_once_in_order_and_may_not_lie(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    node = ScriptedNode(s.url, "streamer", streaming=True)
    await node.connect()
    other = ScriptedNode(s.url, "bystander")
    await other.connect()
    sent = b""
    async with SessionClient(s.url, src="en", tgt="es", end_of_speech="server") as c:
        for seq in range(40):
            chunk = pcm(0.02)[:-2] + seq.to_bytes(2, "little")  # each piece tells where it belongs
            sent += chunk
            await c.send_chunk(seq, chunk)
        job = await node.expect(p.JobAssign)
        assert job.streaming and job.end_of_speech_ms == 500
        got, seq = job.audio, job.audio_seq
        while len(got) < len(sent):
            piece = await node.expect(p.JobAudio)
            assert (piece.job_id, piece.seq) == (job.job_id, seq)  # in order, none missing, none twice
            got += piece.audio
            seq += 1
        assert got == sent
        # another node may not end this utterance; the streaming node's odd sizes are clamped
        await other.send(p.JobSpeechEnd(job_id=job.job_id, attempt_id=1, size=100))
        err = await other.expect(p.Error)
        assert err.code == "not_assigned"
        await node.send(p.JobSpeechEnd(job_id=job.job_id, attempt_id=job.attempt_id, size=10**12))
        final = await node.expect(p.JobAudio)
        assert final.is_final and final.size == len(sent)  # the whole utterance, no more
        await node.send(node.result_for(job))
        r = await c.next_result(5 * SCALE)
        assert r.utterance_index == 0 and r.status == "ok"
        # the next utterance starts with the next speech; a negative size is taken as 0
        await c.send_chunk(40, pcm(0.3))
        job2 = await node.expect(p.JobAssign)
        assert job2.utterance_index == 1
        await node.send(p.JobSpeechEnd(job_id=job2.job_id, attempt_id=job2.attempt_id, size=-5))
        final2 = await node.expect(p.JobAudio)
        assert final2.is_final and final2.size == 0
    await node.close()
    await other.close()


async def test_a_room_is_moved_only_by_its_own_key(cluster: Cluster) -> None:
    import httpx

    from linguamesh.scheduler.sessions.rooms import room_of

    s = await cluster.scheduler()
    key = "k" * 32
    room = room_of(key)
    c1 = SessionClient(s.url, src="en", tgt="es")
    c1.init.room, c1.init.room_key = room, key
    await c1.connect()
    async with httpx.AsyncClient() as http:
        shown = (await http.get(f"{s.http}/api/v1/rooms/{room}")).json()
        assert shown["session_id"] == c1.session_id and shown["view_token"] == c1.ack.view_token  # type: ignore[union-attr]
        for extra, needle in (
            ({"room": room, "room_key": "x" * 32}, "base64url(SHA-256(room_key))"),  # someone else's key
            ({"room": "short", "room_key": key}, "field `room`"),
            ({"room": "a" * 22, "room_key": key}, "base64url(SHA-256(room_key))"),  # not its key's room
            ({"room": room}, "room_key"),
        ):
            await _refused_init(s.url, extra, needle)
        assert (await http.get(f"{s.http}/api/v1/rooms/{room}")).json()["session_id"] == c1.session_id
        c2 = SessionClient(s.url, src="en", tgt="es")  # the speaker's next session moves it
        c2.init.room, c2.init.room_key = room, key
        await c2.connect()
        assert (await http.get(f"{s.http}/api/v1/rooms/{room}")).json()["session_id"] == c2.session_id
        assert (await http.get(f"{s.http}/api/v1/rooms/{'n' * 20}")).status_code == 404
    await c1.disconnect()
    await c2.disconnect()
