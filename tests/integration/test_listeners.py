"""Listener languages: a viewer's ``lang`` on the viewer stream adds that language to the
session from its next utterance on; each viewer gets its language's events only, the
speaker's socket only its own languages'. Real scheduler, node and HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from linguamesh.client import ClientError, SessionClient

from ..conftest import SCALE, Cluster, late_events, pcm, test_engines

FOUR = ["en", "es", "fr", "de"]


@contextlib.asynccontextmanager
async def viewer(url: str) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """Every SSE event of a viewer stream (heartbeats left out), as (event, data), while open."""
    seen: list[tuple[str, dict[str, Any]]] = []
    ready = asyncio.Event()

    async def read() -> None:
        async with httpx.AsyncClient(timeout=None) as http, http.stream("GET", url) as r:
            assert r.status_code == 200, await r.aread()
            ready.set()
            ev: dict[str, str] = {}
            async for line in r.aiter_lines():
                if line.startswith(("event:", "data:")):
                    k, _, v = line.partition(":")
                    ev[k] = v.strip()
                elif line == "" and "data" in ev:
                    if ev.get("event") != "heartbeat":
                        seen.append((ev.get("event", "message"), json.loads(ev["data"])))
                    ev = {}

    task = asyncio.create_task(read())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(check: Any, what: str, timeout: float = 10 * SCALE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def results(seen: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for e, d in seen if e == "translation_result"]


def standing(seen: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [d["status"] for e, d in seen if e == "listener"]


async def test_each_viewer_gets_its_language_and_the_speaker_only_its_own(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, engines=test_engines(languages=FOUR, tts_seconds=0.3))
    async with SessionClient(s.url, src="en", tgt="es") as c:
        assert c.ack is not None
        base = f"{s.http}/api/v1/sessions/{c.ack.session_id}/events/stream?token={c.ack.view_token}"
        await c.send_utterance(0, pcm(0.1))
        assert (await c.next_result(10 * SCALE)).tgt_lang == "es"
        async with (
            viewer(base + "&lang=fr") as fr,
            viewer(base + "&lang=de&audio=1") as de,
            viewer(base + "&lang=it") as it,  # no node serves en->it
            viewer(base) as everything,
        ):
            await until(lambda: standing(fr) == ["ok"] and standing(de) == ["ok"], "the listeners' standing")
            await until(lambda: standing(it) == ["unservable"], "the unservable language said")
            assert "no node serves en->it" in next(d["message"] for e, d in it if e == "listener")
            await asyncio.sleep(1.1)  # the session reads its listeners at most once a second
            for i in (1, 2):
                await c.send_utterance(i, pcm(0.1 * i))
            mine = await c.results(2, 10 * SCALE)
            await until(lambda: len(results(fr)) == 2 and len(results(de)) == 2, "the listeners' results")
            extra = await late_events(c)  # nothing of fr or de reaches the speaker
            await until(lambda: len(results(everything)) == 7, "every result for a viewer without lang")
        await c.resume()  # the replay the speaker is told of is its own languages' only
        replayed = await late_events(c)
    assert [(r.utterance_index, r.tgt_lang) for r in mine] == [(1, "es"), (2, "es")]
    assert not [e for e in extra if getattr(e, "tgt_lang", None) not in (None, "es")], extra
    assert not [e for e in replayed if getattr(e, "tgt_lang", None) not in (None, "es")], replayed
    # from the next utterance on, once each, with speech only for the viewer that asked
    assert [(r["utterance_index"], r["tgt_lang"], r["status"]) for r in results(fr)] == [
        (1, "fr", "ok"),
        (2, "fr", "ok"),
    ]
    assert [(r["utterance_index"], r["tgt_lang"]) for r in results(de)] == [(1, "de"), (2, "de")]
    assert all("tts_audio" not in r for r in results(fr)) and all(r["tts_audio"] for r in results(de))
    assert not [d for _, d in fr if d.get("tgt_lang") not in (None, "fr")]  # only fr's events
    assert results(it) == [] and not [d for _, d in it if d.get("tgt_lang") not in (None, "it")]
    langs = sorted((r["utterance_index"], r["tgt_lang"]) for r in results(everything))
    assert langs == [(0, "es"), (1, "de"), (1, "es"), (1, "fr"), (2, "de"), (2, "es"), (2, "fr")]
    async with httpx.AsyncClient() as http:  # the listener language's transcript
        r = await http.get(
            f"{s.http}/api/v1/sessions/{c.ack.session_id}/transcript",
            params={"lang": "fr", "format": "srt", "token": c.ack.view_token},
        )
    assert r.status_code == 200 and r.text.count("-->") == 2


async def test_listener_languages_beyond_the_sessions_targets_are_told_so(cluster: Cluster) -> None:
    s = await cluster.scheduler(max_targets=2)
    await cluster.node(s.url, engines=test_engines(languages=FOUR))
    async with SessionClient(s.url, src="en", tgt="es") as c:
        assert c.ack is not None
        base = f"{s.http}/api/v1/sessions/{c.ack.session_id}/events/stream?token={c.ack.view_token}"
        async with viewer(base + "&lang=fr") as fr:
            await until(lambda: standing(fr) == ["ok"], "fr accepted")
            async with viewer(base + "&lang=de") as de:
                await until(lambda: standing(de) == ["over_quota"], "de refused")
                await c.send_utterance(0, pcm(0.1))
                await until(lambda: len(results(fr)) == 1, "fr's result")
                await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as http:
            bad = await http.get(base + "&lang=french")
    message = next(d["message"] for e, d in de if e == "listener")
    assert "at most 2 languages (es, fr now)" in message, message
    assert results(de) == []
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_message"


async def test_an_utterance_with_four_targets_is_transcribed_once(cluster: Cluster) -> None:
    """Four target languages, two nodes: each utterance's four jobs go to one node, which
    runs ASR once for them; every (utterance, language) has exactly one result."""
    s = await cluster.scheduler()
    langs = [*FOUR, "it"]
    nodes = [
        await cluster.node(
            s.url, f"node-{i}", engines=test_engines(languages=langs, asr_delay_ms=200), max_concurrent_jobs=8
        )
        for i in range(2)
    ]
    async with SessionClient(s.url, src="en", tgt="es", extra_tgt_langs=["fr", "de", "it"]) as c:
        for i in range(4):
            await c.send_utterance(i, pcm(0.1 + 0.05 * i))
        got = await c.results(16, 20 * SCALE)
        extra = await late_events(c)
    keys = sorted((r.utterance_index, r.tgt_lang) for r in got)
    assert keys == sorted((i, t) for i in range(4) for t in ("es", "fr", "de", "it"))  # 0 lost, 0 doubled
    assert not [e for e in extra if type(e).__name__ == "TranslationResult"]
    for i in range(4):
        mine = [r for r in got if r.utterance_index == i]
        assert len({r.node_id for r in mine}) == 1, [
            (r.tgt_lang, r.node_id) for r in mine
        ]  # siblings together
        assert len({r.text_asr for r in mine}) == 1
    runs = sum(n.agent.transcripts.runs for n in nodes)
    shared = sum(n.agent.transcripts.shared for n in nodes)
    assert (runs, shared) == (4, 12)  # ASR once per utterance, whatever the number of targets


async def test_the_events_title_and_presenter_reach_viewers_and_transcripts(cluster: Cluster) -> None:
    from linguamesh.scheduler.sessions.rooms import room_of

    s = await cluster.scheduler()
    await cluster.node(s.url, engines=test_engines())
    c = SessionClient(s.url, src="en", tgt="es")
    c.init.room_key = "key-of-the-history-lecture"
    c.init.room = room = room_of(c.init.room_key)
    c.init.title, c.init.presenter = "History of the city, lecture 2", "Dr Ana Ruiz"
    async with c:
        await c.send_utterance(0, pcm(0.1))
        await c.next_result(10 * SCALE)
        async with httpx.AsyncClient(base_url=s.http) as http:
            shown = (await http.get(f"/api/v1/rooms/{room}")).json()
            assert c.ack is not None
            one = await http.get(
                f"/api/v1/sessions/{c.ack.session_id}/transcript",
                params={"format": "txt", "token": c.ack.view_token},
            )
            event = await http.get(f"/api/v1/rooms/{room}/transcript", params={"format": "txt"})
            card = await http.get(f"/api/v1/sessions/{c.ack.session_id}", params={"token": c.ack.view_token})
            no_card = await http.get(f"/api/v1/sessions/{c.ack.session_id}", params={"token": "nope"})
        for bad in ("x" * 121, "a\nb"):
            refused = SessionClient(s.url, src="en", tgt="es")
            refused.init.title = bad
            with pytest.raises(ClientError) as exc:
                await refused.connect()
            assert exc.value.code == "bad_message" and "field `title`" in str(exc.value), exc.value
    assert (shown["title"], shown["presenter"]) == ("History of the city, lecture 2", "Dr Ana Ruiz")
    assert card.json() == {
        "session_id": c.ack.session_id, "title": "History of the city, lecture 2", "presenter": "Dr Ana Ruiz",
        "src_lang": "en", "tgt_langs": ["es"], "ended": False,
    }  # fmt: skip
    assert no_card.status_code == 401 and no_card.json()["error"]["code"] == "unauthorized"
    assert one.text.splitlines()[0].startswith(
        "History of the city, lecture 2 — Dr Ana Ruiz: translation from en"
    )
    assert event.text.splitlines()[0].startswith("History of the city, lecture 2 — Dr Ana Ruiz (1 sessions)")
