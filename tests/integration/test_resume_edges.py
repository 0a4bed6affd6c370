"""Resuming a session at its edges, over real sockets: the history no longer holds what
the client missed, the old socket is still open, the session expired, and a client that
claims events the session never had."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.client.session import ClientError

from ..conftest import SCALE, Cluster, eventually, pcm


def _resume(c: SessionClient, last_seq: int) -> str:
    assert c.ack is not None
    return p.encode_str(
        p.SessionInit(
            protocol_version=1,
            src_lang="en",
            tgt_lang="es",
            resume=p.ResumeInfo(
                session_id=c.ack.session_id, resume_token=c.ack.resume_token, last_seq=last_seq
            ),
        )
    )


async def _first(url: str, frame: str) -> p.SessionEvent:
    async with connect(url + "/ws/session") as ws:
        await ws.send(frame)
        return p.decode_event(await asyncio.wait_for(ws.recv(), 5 * SCALE))


async def test_a_resume_older_than_the_window_gets_every_result_from_the_transcript(cluster: Cluster) -> None:
    """The window keeps 3 events: a resume from further back is not refused; the results
    the window no longer holds come back from the transcript (without speech), then the
    window, in seq order."""
    s = await cluster.scheduler(history_size=3)
    await cluster.node(s.url)
    c = SessionClient(s.url, src="en", tgt="es")
    await c.connect()
    for i in range(3):  # several events each (status, partial, result): more than 3 in all
        await c.send_utterance(i, pcm(0.1))
        await c.results(1, timeout=10 * SCALE)
    await c.disconnect()
    last = c.last_seq
    assert last > 6
    async with connect(s.url + "/ws/session") as ws:
        await ws.send(_resume(c, 1))
        ack = p.decode_event(await ws.recv())
        assert isinstance(ack, p.SessionInitAck)
        replay = [p.decode_event(await ws.recv()) for _ in range(ack.replayed)]
    seqs = [e.seq for e in replay]
    assert seqs == sorted(seqs) and seqs[-3:] == [last - 2, last - 1, last]  # then the window
    results = [e for e in replay if isinstance(e, p.TranslationResult)]
    assert [r.utterance_index for r in results] == [0, 1, 2]  # every result
    assert results[0].tts_audio is None and results[-1].tts_audio  # the transcript's have no speech
    ok = await _first(s.url, _resume(c, last - 3))  # the last three: the window alone
    assert isinstance(ok, p.SessionInitAck) and ok.replayed == 3


async def test_resuming_while_the_old_socket_is_open_moves_the_session(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as old:
        await old.send_utterance(0, pcm(0.1))
        await old.next_result(10 * SCALE)
        async with connect(s.url + "/ws/session") as ws:
            await ws.send(_resume(old, 0))
            ack = p.decode_event(await ws.recv())
            assert isinstance(ack, p.SessionInitAck) and ack.replayed == old.last_seq
            replay = [p.decode_event(await ws.recv()) for _ in range(ack.replayed)]
            assert isinstance(replay[-1], p.TranslationResult) and replay[-1].utterance_index == 0
            with pytest.raises(ConnectionClosed) as closed:
                await old.recv(5 * SCALE)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000  # resumed elsewhere
            await ws.send(p.encode_str(p.Utterance(utterance_index=1, audio=pcm(0.1))))
            events: list[p.SessionEvent] = []
            while not isinstance(events[-1:] and events[-1], p.TranslationResult):
                events.append(p.decode_event(await asyncio.wait_for(ws.recv(), 5 * SCALE)))
            assert events[-1].utterance_index == 1  # type: ignore[union-attr]
            seqs = [e.seq for e in [*replay, *events]]
            assert seqs == list(range(1, len(seqs) + 1))  # one stream: nothing lost or repeated


async def test_an_expired_session_cannot_be_resumed(cluster: Cluster) -> None:
    s = await cluster.scheduler(session_linger=0.2)
    c = SessionClient(s.url, src="en", tgt="es")
    await c.connect()
    sid = c.session_id
    await c.disconnect()
    await eventually(lambda: sid not in s.sched.sessions, 5, "the session to expire")
    with pytest.raises(ClientError) as err:
        await c.resume()
    assert err.value.code == "session_not_found"


async def test_a_last_seq_ahead_of_the_history_is_refused(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.1))
        await c.next_result(10 * SCALE)
        async with connect(s.url + "/ws/session") as ws:
            await ws.send(_resume(c, c.last_seq + 50))
            err = p.decode_event(await ws.recv())
            assert isinstance(err, p.Error) and err.code == "bad_message" and "ahead" in err.message
            # the socket stays open and the session is untouched: a correct resume works
            await ws.send(_resume(c, c.last_seq))
            ack = json.loads(await ws.recv())
            assert ack["type"] == "session_init_ack" and ack.get("replayed", 0) == 0  # 0 is left out


async def test_a_resume_reads_the_replay_before_sending_anything_again() -> None:
    """The client library re-sends what the server never confirmed — but not an utterance
    the replay names (here refused with ``draining``): it reads the replay first."""
    from websockets.asyncio.server import serve

    from ..conftest import free_port

    sent_after_resume: list[int] = []
    limits = p.Limits(max_message_bytes=1 << 20, max_utterance_seconds=30)

    async def handler(ws):  # type: ignore[no-untyped-def]
        init = p.decode_client(await ws.recv())
        assert isinstance(init, p.SessionInit)
        ack = p.SessionInitAck(session_id="s1", trace_id="t", resume_token="rt", limits=limits)
        if init.resume is None:
            await ws.send(p.encode_str(ack))
            await ws.recv()  # utterance 3
            await ws.recv()  # utterance 4
            await ws.close()  # the connection drops before anything is confirmed
            return
        ack.replayed = 1
        await ws.send(p.encode_str(ack))
        refused = p.Error(seq=1, code="draining", message="send it again elsewhere", ref="utterance 3")
        await ws.send(p.encode_str(refused))
        async for frame in ws:
            msg = p.decode_client(frame)
            if isinstance(msg, p.Utterance):
                sent_after_resume.append(msg.utterance_index)

    port = free_port()
    async with serve(handler, "127.0.0.1", port):
        c = SessionClient(f"ws://127.0.0.1:{port}", src="en", tgt="es")
        await c.connect()
        await c.send_utterance(3, pcm(0.1))
        await c.send_utterance(4, pcm(0.1))
        with pytest.raises(ConnectionClosed):
            await c.recv(5 * SCALE)
        assert await c.resume() == 1
        replayed = await c.recv(5 * SCALE)
        assert isinstance(replayed, p.Error) and replayed.ref == "utterance 3"
        await eventually(lambda: bool(sent_after_resume), 5, "the re-send")
        await c.disconnect()
    assert sent_after_resume == [4]
