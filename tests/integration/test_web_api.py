"""History, SSE replay and operator access over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from linguamesh.client import SessionClient
from linguamesh.scheduler.edge.access import operator_access
from linguamesh.scheduler.edge.operator_tokens import operator_tokens

from ..conftest import SCALE, Cluster, pcm, test_engines, transcript_lines


async def _sse_events(
    url: str,
    n: int,
    headers: dict[str, str] | None = None,
    got: asyncio.Queue[int] | None = None,
    stop_after: int | None = None,
) -> list[tuple[int, str, dict]]:  # type: ignore[type-arg]
    """The first ``n`` events of an SSE stream (0: the first one, or up to seq
    ``stop_after``); each one's seq also goes to ``got``."""
    out = []
    async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", url, headers=headers or {}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        ev: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line.startswith(("id:", "event:", "data:")):
                k, _, v = line.partition(":")
                ev[k] = v.strip()
            elif line == "" and "data" in ev and "id" not in ev:  # a heartbeat: not a session event
                ev = {}
            elif line == "" and "data" in ev:
                out.append((int(ev["id"]), ev["event"], json.loads(ev["data"])))
                if got is not None:
                    got.put_nowait(out[-1][0])
                ev = {}
                if stop_after is not None:
                    if out[-1][0] >= stop_after:
                        return out
                elif len(out) >= max(n, 1):
                    return out
    return out


async def test_viewers_get_the_translated_speech_only_when_they_ask_for_it(cluster: Cluster) -> None:
    """A result's speech is most of its bytes and the viewer page does not play it: an SSE
    viewer gets results without ``tts_audio`` unless it asks (``audio=1``), in the replay
    and live alike."""
    s = await cluster.scheduler()
    await cluster.node(s.url, engines=test_engines(tts_seconds=0.5))
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.1))
        assert (await c.next_result(10 * SCALE)).tts_audio  # the speaker gets the speech
        assert c.ack is not None
        url = f"{s.http}/api/v1/sessions/{c.ack.session_id}/events/stream?token={c.ack.view_token}"
        url += "&types=translation_result"
        got_quiet: asyncio.Queue[int] = asyncio.Queue()
        got_loud: asyncio.Queue[int] = asyncio.Queue()
        quiet = asyncio.create_task(_sse_events(url, 2, got=got_quiet))
        loud = asyncio.create_task(_sse_events(url + "&audio=1", 2, got=got_loud))
        await asyncio.wait_for(got_quiet.get(), 10)  # the replayed result
        await asyncio.wait_for(got_loud.get(), 10)
        await c.send_utterance(1, pcm(0.1))  # and a live one
        quiet_events, loud_events = await asyncio.wait_for(asyncio.gather(quiet, loud), 10 * SCALE)
    assert [e[2]["utterance_index"] for e in quiet_events] == [0, 1]
    assert all("tts_audio" not in e[2] and e[2]["text_translated"] for e in quiet_events)
    assert all(e[2]["tts_audio"] for e in loud_events) and len(loud_events) == 2


async def test_history_and_sse_replay_with_last_event_id(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        for i in range(3):
            await c.send_utterance(i, pcm(0.1))
        await c.results(3, timeout=10 * SCALE)
        assert c.ack is not None
        sid, token = c.ack.session_id, c.ack.view_token
        base = f"{s.http}/api/v1/sessions/{sid}"
        async with httpx.AsyncClient() as http:
            hist = (
                await http.get(f"{base}/events", params={"token": token, "types": "translation_result"})
            ).json()
            full = (await http.get(f"{base}/events", params={"token": token})).json()
            since = (await http.get(f"{base}/events", params={"token": token, "since": 3})).json()
            denied = await http.get(f"{base}/events", params={"token": c.ack.resume_token})
            missing = await http.get(f"{s.http}/api/v1/sessions/s-NOPE/events", params={"token": "x"})
            bad = await http.get(f"{base}/events", params={"token": token, "since": "x"})
        assert [e["utterance_index"] for e in hist["events"]] == [0, 1, 2]
        after3 = [e for e in full["events"] if e["seq"] > 3]
        assert after3 and since["events"] == after3 and since["last_seq"] == full["events"][-1]["seq"]
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        async with httpx.AsyncClient() as http:  # in pages: `next` is the `after` of the next one
            paged, after = [], 0
            while after is not None:
                page = (
                    await http.get(f"{base}/events", params={"token": token, "after": after, "limit": 2})
                ).json()
                assert len(page["events"]) <= 2
                paged += page["events"]
                after = page["next"]
        assert paged == full["events"] and full["next"] is None
        assert missing.status_code == 404 and bad.status_code == 400
        # SSE: replay everything after Last-Event-ID, then live events
        stream_url = f"{base}/events/stream?token={token}&types=translation_result"
        last = hist["events"][0]["seq"]
        got: asyncio.Queue[int] = asyncio.Queue()
        replay = asyncio.create_task(_sse_events(stream_url, 3, {"Last-Event-ID": str(last)}, got))
        replayed = [await asyncio.wait_for(got.get(), 10) for _ in range(2)]  # 1 and 2, from the history
        assert replayed == [e["seq"] for e in hist["events"][1:]]
        await c.send_utterance(3, pcm(0.1))  # only now: its result can only come live
        events = await asyncio.wait_for(replay, 10 * SCALE)
    assert [e[2]["utterance_index"] for e in events] == [1, 2, 3]
    assert all(e[1] == "translation_result" for e in events)
    assert [e[0] for e in events] == sorted(e[0] for e in events) and events[0][0] > last


async def test_operator_api_needs_the_token_when_one_is_set(cluster: Cluster) -> None:
    s = await cluster.scheduler(operator_token="op-secret")
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.1))
        await c.next_result(10 * SCALE)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{s.http}/api/v1/admin/overview")).status_code == 401
        ok = await http.get(f"{s.http}/api/v1/admin/overview", headers={"Authorization": "Bearer op-secret"})
        page = await http.get(f"{s.http}/admin")
        icon = await http.get(f"{s.http}/favicon.ico")
    assert ok.status_code == 200 and ok.json()["instance_id"] == "local"
    assert page.status_code == 200 and "operator" in page.text
    # counters read as Prometheus would write them, and series still at 0 are left out
    counters = ok.json()["counters"]
    assert counters["jobs_finished{state=completed,code=none}"] == 1, counters
    assert not any(v == 0 and "{" in k for k, v in counters.items())
    # latency percentiles over the window: the one job, from the end of its speech and whole
    latency = ok.json()["latency"]
    assert latency["window_s"] == 900 and latency["job"]["jobs"] == latency["after_speech"]["jobs"] == 1
    assert 0 < latency["after_speech"]["p50"] == latency["after_speech"]["p99"] < 10_000 * SCALE, latency
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_operator_access_rules() -> None:
    assert operator_access("127.0.0.1", None, None) is None
    assert operator_access("::1", None, None) is None
    assert operator_access("0.0.0.0", None, None) == (
        403,
        "operator data is off: start the scheduler with --operator-token or --operator-token-file",
    )
    assert operator_access("0.0.0.0", (), None)[0] == 403  # type: ignore[index]
    assert operator_access("10.0.0.5", "t", "t") is None
    assert operator_access("10.0.0.5", "t", "x")[0] == 401  # type: ignore[index]
    assert operator_access("10.0.0.5", ("old", "new"), "new") is None  # during a rotation
    assert operator_access("10.0.0.5", ("old", "new"), "x")[0] == 401  # type: ignore[index]


def test_the_operator_token_file_lists_one_token_a_line(tmp_path: Path) -> None:
    f = tmp_path / "ops"
    f.write_text("# rotated 2026-12\noperator-token-aaaaaaaa\n\noperator-token-bbbbbbbb  # new\n")
    assert operator_tokens("flag-token", str(f)) == (
        "flag-token",
        "operator-token-aaaaaaaa",
        "operator-token-bbbbbbbb",
    )
    assert operator_tokens(None, None) == ()
    for text, problem in (
        ("short\n", "line 1"),
        ("a" * 20 + " " + "b" * 20 + "\n", "line 1"),
        ("# none\n", "no token"),
    ):
        f.write_text(text)
        with pytest.raises(ValueError, match=problem):
            operator_tokens(None, str(f))
    with pytest.raises(ValueError, match="--operator-token-file"):
        operator_tokens(None, str(tmp_path / "missing"))


async def test_transcript_downloads_parse_and_match_the_results(cluster: Cluster) -> None:
    import io
    from datetime import timedelta

    import srt
    import webvtt

    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es", extra_tgt_langs=["fr"]) as c:
        got = []
        for i, seconds in enumerate((0.4, 0.6)):
            await c.send_utterance(i, pcm(seconds))
            got += [await c.next_result(5 * SCALE) for _ in range(2)]
            await asyncio.sleep(0.3)
        token = c.ack.view_token  # type: ignore[union-attr]
        base = f"{s.http}/api/v1/sessions/{c.session_id}/transcript"
        async with httpx.AsyncClient() as http:
            srt_res = await http.get(base, params={"format": "srt", "lang": "es", "token": token})
            vtt_res = await http.get(base, params={"format": "vtt", "lang": "fr", "token": token})
            txt_res = await http.get(base, params={"format": "txt", "lang": "en", "token": token})
            refused = [
                (await http.get(base, params={"format": "srt"})).status_code,
                (await http.get(base, params={"format": "doc", "token": token})).status_code,
                (await http.get(base, params={"lang": "de", "token": token})).status_code,
            ]
    assert refused == [401, 400, 400]
    assert srt_res.headers["content-type"].startswith("application/x-subrip")
    assert "attachment" in srt_res.headers["content-disposition"]
    es = sorted((r for r in got if r.tgt_lang == "es"), key=lambda r: r.utterance_index)
    subs = list(srt.parse(srt_res.text))
    assert [x.content for x in subs] == [r.text_translated for r in es]
    assert subs[0].start == timedelta(0)
    assert subs[0].end - subs[0].start == timedelta(seconds=0.4)  # the utterance's own length
    assert subs[1].start >= subs[0].end  # spoken later
    fr = sorted((r for r in got if r.tgt_lang == "fr"), key=lambda r: r.utterance_index)
    assert [x.text for x in webvtt.from_buffer(io.StringIO(vtt_res.text)).captions] == [
        r.text_translated for r in fr
    ]
    assert transcript_lines(txt_res.text) == [r.text_asr for r in es]


async def test_a_late_viewer_gets_every_result_then_the_window_then_live_events(cluster: Cluster) -> None:
    """The window keeps the last few events only: a viewer who opens the stream with no
    Last-Event-ID, or with one the window has moved past, gets every result so far (the
    transcript, without speech, where the window moved on), then the window, then live
    events — never an error — and leaves no subscriber behind."""
    s = await cluster.scheduler(history_size=6)
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        for i in range(5):
            await c.send_utterance(i, pcm(0.1))
        await c.results(5, timeout=10 * SCALE)
        assert c.ack is not None
        sid, token = c.ack.session_id, c.ack.view_token
        session = s.sched.sessions[sid]  # type: ignore[index]
        last_seq = await s.sched.store.last_seq(sid)  # type: ignore[arg-type]
        assert last_seq > 6  # event 1 is gone from the window
        stream_url = f"{s.http}/api/v1/sessions/{sid}/events/stream?token={token}"
        for n, headers in enumerate(({}, {"Last-Event-ID": "1"})):
            replay = await _sse_events(stream_url, 0, headers, stop_after=last_seq)
            seqs = [seq for seq, _, _ in replay]
            assert seqs == sorted(set(seqs)) and seqs[-1] == last_seq
            assert seqs[-6:] == list(range(last_seq - 5, last_seq + 1))  # the window, in order
            results = [d["utterance_index"] for _, kind, d in replay if kind == "translation_result"]
            assert results == list(range(5 + n))  # every result, the window's and the transcript's
            viewer = asyncio.create_task(_sse_events(stream_url, 0, {"Last-Event-ID": str(last_seq)}))
            await asyncio.sleep(0.3)
            await c.send_utterance(5 + n, pcm(0.1))  # a live event follows
            live = await asyncio.wait_for(viewer, 10 * SCALE)
            assert live and live[0][0] == last_seq + 1
            await c.results(1, timeout=10 * SCALE)
            last_seq = await s.sched.store.last_seq(sid)  # type: ignore[arg-type]
        for _ in range(100):  # both viewers left: their subscriptions are gone
            if not session.delivery.subscribers:
                break
            await asyncio.sleep(0.05)
        assert not session.delivery.subscribers
