"""A compressed hour: one session with more utterances than an hour of talk holds, on a
real scheduler process, a real node process and a real Redis. The transcript keeps every
result while the replay window stays under its byte bound; a viewer who joins at the end
gets every result so far and then the next ones live; the speaker's page, reloaded at
the end, resumes with every row."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from pathlib import Path

import httpx
import redis.asyncio as aioredis
import srt
import webvtt

from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.state import redis_keys as K

from ..conftest import SCALE, pcm, transcript_lines
from ..fleet import Fleet
from ..integration.test_web_api import _sse_events

UTTERANCES = 600
WINDOW_BYTES = 1_000_000
#: the intake's rate limits would pace 600 utterances over a minute: this test is about length
FAST = {
    "LINGUAMESH_SESSION_UTTERANCES_PER_S": "1000",
    "LINGUAMESH_SESSION_UTTERANCE_BURST": "1000",
    "LINGUAMESH_IP_UTTERANCES_PER_S": "1000",
    "LINGUAMESH_IP_UTTERANCE_BURST": "1000",
}


async def test_a_compressed_hour_keeps_every_result_and_bounds_the_window(tmp_path: Path) -> None:
    async with Fleet(tmp_path) as fleet:
        assert fleet.redis is not None
        s = await fleet.scheduler("A", "--history-bytes", str(WINDOW_BYTES), env=FAST)
        fleet.node("n1", [s.url], delay_ms=20, slots=16)
        await fleet.wait_node("A", "n1")
        got: dict[int, int] = {}
        partials: set[int] = set()
        async with SessionClient(s.url, src="en", tgt="es", partials=True) as c:
            assert c.ack is not None
            sid, token = c.ack.session_id, c.ack.view_token
            for start in range(0, UTTERANCES, 50):  # 50 in flight at a time
                for i in range(start, start + 50):
                    await c.send_utterance(i, pcm(0.1))
                while sum(got.values()) < start + 50:
                    ev = await c.recv(30 * SCALE)
                    if isinstance(ev, p.TranslationResult):
                        assert ev.status == "ok" and ev.tts_audio, ev
                        got[ev.utterance_index] = got.get(ev.utterance_index, 0) + 1
                    elif isinstance(ev, p.AsrPartial):
                        partials.add(ev.utterance_index)
            lost = [i for i in range(UTTERANCES) if i not in got]
            duplicated = [i for i, n in got.items() if n > 1]
            assert (lost, duplicated) == ([], [])
            assert len(partials) == UTTERANCES  # every utterance had its draft first

            r = aioredis.Redis.from_url(fleet.redis.url)
            http = httpx.AsyncClient(timeout=30)
            try:
                # the window is bounded by bytes; the transcript holds every result, without speech
                window = int(await r.get(K.history_bytes(sid)))
                # (SAMPLES 0: every element measured; the default estimate from 5 samples of a
                # stream whose entries differ in size by 100x varies by half between runs)
                window_mem = await r.memory_usage(K.history(sid), samples=0)
                transcript_mem = await r.memory_usage(K.transcript(sid), samples=0)
                assert window <= WINDOW_BYTES and window_mem < 1.5 * WINDOW_BYTES, (window, window_mem)
                assert await r.xlen(K.transcript(sid)) == UTTERANCES
                last_seq = int(await r.get(K.seqno(sid)))
                print(
                    f"\n{UTTERANCES} utterances: window {window} B ({window_mem} B in Redis), "
                    f"transcript {transcript_mem} B in Redis ({transcript_mem / UTTERANCES:.0f} B per result)"
                )

                # the transcript download: every utterance, in order, in each format
                base = f"{s.http}/api/v1/sessions/{sid}/transcript"
                txt = await http.get(base, params={"format": "txt", "lang": "en", "token": token})
                vtt = await http.get(base, params={"format": "vtt", "lang": "es", "token": token})
                subs = await http.get(base, params={"format": "srt", "lang": "es", "token": token})
                assert len(transcript_lines(txt.text)) == UTTERANCES
                cues = webvtt.from_buffer(io.StringIO(vtt.text)).captions
                assert [int(cue.identifier) for cue in cues] == list(range(UTTERANCES))
                parsed = list(srt.parse(subs.text))
                assert len(parsed) == UTTERANCES
                assert all(a.start <= b.start for a, b in itertools.pairwise(parsed))

                # a viewer who joins at the end: every result so far, then the next ones live
                stream = f"{s.http}/api/v1/sessions/{sid}/events/stream?token={token}"
                started = asyncio.get_running_loop().time()
                replay = await _sse_events(stream, 0, stop_after=last_seq)
                join_s = asyncio.get_running_loop().time() - started
                results = [d["utterance_index"] for _, kind, d in replay if kind == "translation_result"]
                assert results == list(range(UTTERANCES))
                print(f"a viewer joining at the end got {len(replay)} events in {join_s * 1000:.0f} ms")
                viewer = asyncio.create_task(
                    _sse_events(stream, 0, {"Last-Event-ID": str(last_seq)}, stop_after=None)
                )
                await asyncio.sleep(0.3)
                await c.send_utterance(UTTERANCES, pcm(0.1))
                (res,) = await c.results(1, timeout=10 * SCALE)
                live = await asyncio.wait_for(viewer, 10 * SCALE)
                assert live[0][0] == last_seq + 1 and res.utterance_index == UTTERANCES

                # the speaker's page reloaded: it resumes from 0 and gets every row back
                reload = SessionClient(s.url, src="en", tgt="es")
                reload.ack = c.ack
                try:
                    replayed = await reload.resume()
                    rows = []
                    while reload._replayed:
                        ev = reload._replayed.popleft()
                        if isinstance(ev, p.TranslationResult):
                            rows.append(ev.utterance_index)
                    assert rows == list(range(UTTERANCES + 1)), (replayed, rows[:5], rows[-5:])
                    # the session ends: its viewers can still download the transcript
                    await reload.close_session()
                    await asyncio.sleep(0.5)
                finally:
                    await reload.disconnect()

                after = await http.get(base, params={"format": "txt", "lang": "es", "token": token})
                assert after.status_code == 200 and len(transcript_lines(after.text)) == UTTERANCES + 1
                # the events API, page by page (1,000 at most each): every result of the ended session
                results, after, pages = 0, 0, 0
                while after is not None:
                    page = json.loads((await http.get(
                        f"{s.http}/api/v1/sessions/{sid}/events",
                        params={"token": token, "after": after, "limit": 1000, "types": "translation_result"},
                    )).text)  # fmt: skip
                    results += len(page["events"])
                    after, pages = page["next"], pages + 1
                assert results == UTTERANCES + 1 and pages == 1 + (UTTERANCES + 1) // 1000
            finally:
                await http.aclose()
                await r.aclose()
