"""Bounded memory, measured as the RSS of a real scheduler process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, pcm
from ..fleet import Fleet, rss_mb

OPEN = {  # the intake limits are not what these tests measure
    "LINGUAMESH_SESSION_AUDIO_PER_S": "1000",
    "LINGUAMESH_SESSION_AUDIO_BURST": "100000",
    "LINGUAMESH_IP_AUDIO_PER_S": "1000",
    "LINGUAMESH_IP_AUDIO_BURST": "100000",
    "LINGUAMESH_SESSION_UTTERANCES_PER_S": "1000",
    "LINGUAMESH_IP_UTTERANCES_PER_S": "10000",
    "LINGUAMESH_IP_UTTERANCE_BURST": "10000",
    "LINGUAMESH_MAX_CONNECTIONS_PER_IP": "10000",
    "LINGUAMESH_IP_SESSIONS_PER_S": "100000",
    "LINGUAMESH_IP_SESSION_BURST": "100000",
    "LINGUAMESH_MAX_SESSIONS_PER_IP": "100000",
}


async def _cycles(url: str, n: int, workers: int = 16, utterance_every: int = 10) -> None:
    """``n`` sessions, each: open, close; every ``utterance_every``-th with an utterance and
    its result in between."""
    left = iter(range(n))

    async def worker() -> None:
        for i in left:
            async with SessionClient(url, src="en", tgt="es", tts=False) as c:
                if i % utterance_every == 0:
                    await c.send_utterance(0, pcm(0.1))
                    assert (await c.next_result(30 * SCALE)).status == "ok"
                await c.close_session()
                await c.wait_closed(10 * SCALE)

    await asyncio.gather(*(worker() for _ in range(workers)))


async def test_6000_sessions_opened_and_closed_leave_memory_flat(tmp_path: Path) -> None:
    async with Fleet(tmp_path, redis=False, measure=False) as fleet:  # a load: no coverage
        s = await fleet.scheduler("S", "--session-linger", "1", env=OPEN)
        fleet.node("n1", [s.url], delay_ms=0, slots=32)
        await fleet.wait_node("S", "n1")
        await _cycles(s.url, 500)  # warm up: imports, caches, allocator arenas
        before = rss_mb(s.pid)
        t0 = time.monotonic()
        await _cycles(s.url, 6000)
        took = time.monotonic() - t0
        await asyncio.sleep(1.5)  # lingering sessions expire
        after = rss_mb(s.pid)
        print(f"6000 cycles in {took:.1f}s: RSS {before:.1f} -> {after:.1f} MB")
        assert after - before <= 30, f"RSS grew {after - before:.1f} MB over 6000 sessions"
        async with httpx.AsyncClient() as http:  # the finished-job window is bounded
            r = await http.get(f"{s.http}/metrics")
        assert r.status_code == 200


async def test_200_ten_second_utterances_leave_no_audio_behind(tmp_path: Path) -> None:
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("S", env=OPEN)
        fleet.node("n1", [s.url], delay_ms=0, slots=8)
        await fleet.wait_node("S", "n1")
        audio = pcm(10.0)  # 320 KB of PCM each

        async def talk(n: int) -> None:  # one utterance at a time, as a speaker would
            async with SessionClient(s.url, src="en", tgt="es", tts=False) as c:
                for i in range(n):
                    await c.send_utterance(i, audio)
                    assert (await c.next_result(30 * SCALE)).status == "ok"

        await asyncio.gather(*(talk(10) for _ in range(2)))  # warm up: 20
        before = rss_mb(s.pid)
        await asyncio.gather(*(talk(100) for _ in range(2)))  # 200 more
        after = rss_mb(s.pid)
        print(f"200 ten-second utterances: RSS {before:.1f} -> {after:.1f} MB")
        # kept, their audio alone would be 64 MB (and more as base64)
        assert after - before <= 20, f"RSS grew {after - before:.1f} MB"


async def test_a_client_that_never_reads_is_cut_and_gets_the_rest_on_resume(tmp_path: Path) -> None:
    env = {**OPEN, "LINGUAMESH_MAX_CLIENT_BACKLOG_BYTES": str(2 * 1024 * 1024)}
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("S", env=env)
        fleet.node("n1", [s.url], delay_ms=0, slots=8, engine="tts_seconds = 10\n")  # ~430 KB results
        await fleet.wait_node("S", "n1")
        before = rss_mb(s.pid)
        # a raw client: it sends, never reads; its library stops reading once one frame waits
        ws = await connect(f"{s.url}/ws/session", max_queue=1, max_size=None)
        init = p.SessionInit(protocol_version=1, src_lang="en", tgt_lang="es", tts=True)
        await ws.send(p.encode_str(init))
        ack = p.decode_event(await ws.recv())
        assert isinstance(ack, p.SessionInitAck)
        cut = None
        sent = 0
        peak = before
        try:
            for i in range(120):
                await ws.send(p.encode_str(p.Utterance(utterance_index=i, audio=pcm(0.1))))
                sent += 1
                await asyncio.sleep(0.05)
                peak = max(peak, rss_mb(s.pid))
        except ConnectionClosed as exc:
            cut = exc.rcvd.code if exc.rcvd else None
        if cut is None:  # the close frame waits behind what the client never read: read it all now
            try:
                async with asyncio.timeout(30 * SCALE):
                    while True:
                        await ws.recv()
            except ConnectionClosed:
                pass
            cut = ws.close_code
        print(f"slow reader: cut with {cut} after {sent} utterances; RSS {before:.1f} -> peak {peak:.1f} MB")
        # 4008 when the close frame got through; a client that read nothing for long sees
        # only the connection end (1006): the frame waited behind what it never read
        assert cut in (4008, 1006), cut
        records = (tmp_path / "S.1.log").read_text()
        assert '"session.slow_reader"' in records
        assert peak - before <= 40, f"RSS grew {peak - before:.1f} MB for one slow reader"
        # what it missed is kept: a resume gets every result of what was accepted
        c = SessionClient(s.url, src="en", tgt="es")
        c.ack = ack
        await c.resume()
        got: dict[int, str] = {}
        try:
            while True:  # the replay, then quiet
                ev = await c.recv(3 * SCALE)
                if isinstance(ev, p.TranslationResult):
                    assert ev.utterance_index not in got, f"result {ev.utterance_index} twice"
                    got[ev.utterance_index] = ev.status
        except TimeoutError:
            pass
        await c.disconnect()
        # every utterance the server took before the socket ended has its result, in order
        assert len(got) >= 16 and sorted(got) == list(range(len(got))), sorted(got)
        assert set(got.values()) == {"ok"}
