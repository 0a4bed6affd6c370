"""Bad input gets a stable error code; the connection stays up unless the error is fatal;
nothing already accepted is lost, and other sessions are served throughout."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, of, pcm, receive_until, until_result


async def _error(ws) -> p.Error:  # type: ignore[no-untyped-def]
    ev = p.decode_event(await ws.recv())
    assert isinstance(ev, p.Error), ev
    return ev


def _utt(index: int, audio: str = "AAAA") -> str:
    return json.dumps({"type": "utterance", "utterance_index": index, "audio": audio})


INIT = json.dumps({"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "es"})


async def test_errors_before_session_init_keep_connection_open(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    async with connect(s.url + "/ws/session") as ws:
        cases = [
            ("this is not json", "bad_message", "JSON"),
            ("[1, 2]", "bad_message", "object"),
            ('{"type": "teleport"}', "bad_message", "teleport"),
            ('{"no_type": 1}', "bad_message", "`type`"),
            (_utt(0), "bad_message", "session_init"),
            ('{"type": "session_init", "protocol_version": 1, "src_lang": "en"}', "bad_message", "tgt_lang"),
            (
                '{"type": "session_init", "protocol_version": "one", "src_lang": "en", "tgt_lang": "es"}',
                "bad_message",
                "protocol_version",
            ),
            (
                '{"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "klingon"}',
                "unsupported_language_pair",
                "tgt_lang",
            ),
        ]
        for frame, code, needle in cases:
            await ws.send(frame)
            err = await _error(ws)
            assert err.code == code, (frame, err)
            assert needle in err.message, (frame, err.message)
        await ws.send(b"\x00\x01binary")
        assert (await _error(ws)).code == "bad_message"
        # still open: a valid session_init now works
        await ws.send(INIT)
        ack = p.decode_event(await ws.recv())
        assert isinstance(ack, p.SessionInitAck)


async def test_errors_inside_a_session_lose_nothing_already_accepted(cluster: Cluster) -> None:
    s = await cluster.scheduler(max_message_bytes=200_000, max_utterance_seconds=2)
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))  # accepted before the bad input
        bad = [
            ("garbage{", "bad_message"),
            ('{"type": "utterance", "utterance_index": 1}', "bad_message"),
            ('{"type": "utterance", "utterance_index": "x", "audio": ""}', "bad_message"),
            (_utt(1, "%%%not-base64%%%"), "bad_audio"),
            (_utt(1, "AAAA"), "bad_audio"),  # 3 bytes: odd pcm16 byte count
            (
                '{"type": "utterance", "utterance_index": 1, "audio": "' + "A" * 220_000 + '"}',
                "audio_too_large",
            ),
            (json.dumps({"type": "ack", "seq": "many"}), "bad_message"),
            (INIT, "bad_message"),  # second session_init
        ]
        for frame, _code in bad:
            await c.send_raw(frame)
        # too long (3 s > 2 s) but a small frame
        await c.send_utterance(1, pcm(3.0)[: 2 * 16000 * 3])
        await c.send_utterance(2, pcm(0.1))  # still accepted afterwards
        events = await receive_until(c, until_result(2))
        errors = [e.code for e in of(events, p.Error)]
        results = of(events, p.TranslationResult)
    assert errors == [code for _, code in bad] + ["audio_too_large"]
    assert [(r.utterance_index, r.status) for r in results] == [(0, "ok"), (2, "ok")]


async def test_wav_header_garbage_is_bad_audio(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    async with SessionClient(s.url, src="en", tgt="es", audio_format="wav") as c:
        await c.send_utterance(0, b"RIFF not really a wav file")
        ev = await c.recv(5 * SCALE)
    assert isinstance(ev, p.Error) and ev.code == "bad_audio" and "WAV" in ev.message


async def test_wrong_protocol_version_is_fatal_and_others_keep_being_served(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as other:
        async with connect(s.url + "/ws/session") as ws:
            await ws.send(INIT.replace('"protocol_version": 1', '"protocol_version": 7'))
            err = await _error(ws)
            assert err.code == "unsupported_version"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await other.send_utterance(0, pcm(0.1))
        r = await other.next_result(5 * SCALE)
    assert r.status == "ok"


async def test_duplicate_utterance_index_and_request_id_make_no_second_job(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.1), request_id="r-0")
        await c.send_utterance(0, pcm(0.1), request_id="r-0")  # retry of the same utterance
        await c.send_utterance(1, pcm(0.1), request_id="r-0")  # same request id, new index
        await c.send_utterance(2, pcm(0.1))
        results = await c.results(2, timeout=5 * SCALE)
    assert [r.utterance_index for r in results] == [0, 2]
    assert s.sched.metrics.value("jobs_created") == 2
    assert s.sched.metrics.value("utterances_duplicate") == 2


async def test_decreasing_utterance_index_is_refused(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(5, pcm(0.1))
        await c.send_utterance(3, pcm(0.1))
        events = await receive_until(c, until_result())
    errors = of(events, p.Error)
    assert [e.code for e in errors] == ["bad_message"] and "must increase" in errors[0].message
    assert [r.utterance_index for r in of(events, p.TranslationResult)] == [5]


async def test_node_bad_input_and_wrong_token(cluster: Cluster) -> None:
    s = await cluster.scheduler(node_token="sekrit")
    async with connect(s.url + "/ws/node") as ws:
        await ws.send("{bad")
        assert p.decode_to_node(await ws.recv()).code == "bad_message"  # type: ignore[union-attr]
        await ws.send(json.dumps({"type": "job_ack", "job_id": "x", "attempt_id": 1}))
        err = p.decode_to_node(await ws.recv())
        assert isinstance(err, p.Error) and "node_register" in err.message
        reg = {
            "type": "node_register",
            "protocol_version": 1,
            "node_id": "n1",
            "version": "t",
            "capabilities": {"asr_languages": ["en"]},
            "token": "wrong",
        }
        await ws.send(json.dumps(reg))
        err = p.decode_to_node(await ws.recv())
        assert isinstance(err, p.Error) and err.code == "unauthorized"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert "n1" not in s.sched.nodes
