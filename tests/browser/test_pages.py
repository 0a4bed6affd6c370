"""The web pages in a real headless Chromium against a real scheduler and node on loopback."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np

from linguamesh.audio import to_wav
from linguamesh.node.defaults import default_engines
from linguamesh.quality import wer

from ..conftest import SCALE, Cluster, eventually, test_engines
from .conftest import ARTIFACTS, SPOKEN, check_accessibility, new_page, open_viewer


async def _start_session(
    page: Any, src: str = "en", tgt: str = "es", title: str = "", presenter: str = ""
) -> str:
    await page.goto("/")
    await page.wait_for_function("document.querySelectorAll('#src option').length > 0")
    await page.select_option("#src", src)
    await page.select_option("#tgt", tgt)
    await page.fill("#title", title)
    await page.fill("#presenter", presenter)
    await page.click("#start")
    await page.wait_for_selector("#conn[data-state=connected]")
    return str(await page.evaluate("window.lm.session.sessionId"))


def first_words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())[:2]


async def _results(page: Any) -> list[dict[str, Any]]:
    return await page.evaluate(
        "window.seen.results.map(r => ({i: r.utterance_index, s: r.status, asr: r.text_asr, mt: r.text_translated}))"
    )


async def test_microphone_speech_is_captioned_live_then_translated_and_spoken(
    cluster: Cluster, browser: Any
) -> None:
    s = await cluster.scheduler(result_timeout=60)
    await cluster.node(s.url, "mic-node", engines=default_engines(), max_concurrent_jobs=1)
    page = await new_page(browser, s.http)
    await _start_session(page)
    loop = asyncio.get_running_loop()
    held = loop.time()
    await page.evaluate("window.lm.talkStart()")  # push-to-talk: hold while the sentence plays
    # a live caption while the button is still held (streaming: the speech is decoded as it comes)
    await page.wait_for_function("window.seen.captions > 0", timeout=4500)
    caption = await page.locator("li.utt .asr").first.inner_text()
    assert caption.strip(), caption
    # the microphone level meter moves (read while the speech plays, not at one instant:
    # under load the caption can come in a pause between words)
    await page.wait_for_function(
        "Number(document.querySelector('#level').getAttribute('aria-valuenow')) > 0", timeout=3000
    )
    await page.screenshot(path=ARTIFACTS / "speaker-live-caption.png", full_page=True)
    await asyncio.sleep(max(0.0, 4.6 - (loop.time() - held)))  # held for the length of the speech
    assert await page.evaluate("window.seen.ends") == 0  # the caption came before the speaker stopped
    await page.evaluate("window.lm.talkStop()")
    row = page.locator("li.utt[data-status=ok]").first
    await row.wait_for(timeout=60_000)
    asr = await row.locator(".asr").inner_text()
    mt = await row.locator(".mt").inner_text()
    assert wer(SPOKEN, asr) <= 0.3, asr
    assert first_words(asr) == first_words(SPOKEN), asr  # not "Don't …" (a 48 kHz capture)
    assert "museo" in mt.lower(), mt
    src = await row.locator("audio").get_attribute("src")
    assert src and src.startswith("blob:")
    duration = await row.locator("audio").evaluate(
        "a => new Promise(ok => a.readyState >= 1 ? ok(a.duration) : a.addEventListener('loadedmetadata', () => ok(a.duration)))"
    )
    assert duration > 0.5
    latency = await row.locator(".latency").inner_text()
    assert "ms" in latency
    assert not page.js_errors
    await page.screenshot(path=ARTIFACTS / "speaker-microphone.png", full_page=True)


async def test_file_upload_gives_transcript_translation_and_speech(
    cluster: Cluster, browser: Any, spoken_wav: Path
) -> None:
    s = await cluster.scheduler(result_timeout=60)
    await cluster.node(s.url, "file-node", engines=default_engines(), max_concurrent_jobs=1)
    page = await new_page(browser, s.http)
    await _start_session(page)
    await page.set_input_files("#file", str(spoken_wav))
    row = page.locator("li.utt[data-status=ok]").first
    await row.wait_for(timeout=60_000)
    assert wer(SPOKEN, await row.locator(".asr").inner_text()) <= 0.3
    assert "museo" in (await row.locator(".mt").inner_text()).lower()
    assert (await row.locator("audio").get_attribute("src") or "").startswith("blob:")
    # the ids an operator follows the utterance by: in the row's tooltip, not in the reader's view
    job = next(iter(s.sched.runner.finished.values()))
    assert f"trace {job.trace_id} · job {job.job_id}" in (await row.get_attribute("title") or "")
    assert await row.locator(".ids").inner_text() == ""
    assert not page.js_errors
    await page.screenshot(path=ARTIFACTS / "speaker-upload.png", full_page=True)


def _tone_wav(tmp: Path, name: str, seconds: float) -> Path:
    t = np.arange(int(seconds * 16000), dtype=np.float32) / 16000
    path = tmp / name
    path.write_bytes(to_wav(0.2 * np.sin(2 * np.pi * 330 * t), 16000))
    return path


async def test_cut_connection_resumes_and_shows_every_result_once(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "slow-node", engines=test_engines(delay_ms=150), max_concurrent_jobs=1)
    page = await new_page(browser, s.http)
    sid = await _start_session(page)
    for i in range(3):
        await page.set_input_files("#file", str(_tone_wav(tmp_path, f"t{i}.wav", 0.3 + 0.1 * i)))
        await page.wait_for_function(f"window.seen.ends === {i + 1}")
    await eventually(lambda: len(s.sched.jobs) >= 1, 5, "jobs to be running")
    session = s.sched.sessions[sid]  # type: ignore[index]
    assert session.delivery.conn is not None
    await session.delivery.conn.close(4003)  # cut the connection from the server side while jobs run
    await page.wait_for_selector("#conn[data-state=reconnecting]", timeout=int(5000 * SCALE))
    await page.wait_for_selector("#conn[data-state=connected]", timeout=10_000)
    await page.wait_for_function("window.seen.results.length >= 3", timeout=20_000)
    await asyncio.sleep(0.5 * SCALE)  # anything duplicated would arrive now
    results = await _results(page)
    assert sorted(r["i"] for r in results) == [0, 1, 2]
    assert all(r["s"] == "ok" for r in results)
    assert await page.locator("li.utt").count() == 3
    assert await page.locator("li.utt[data-status=ok]").count() == 3
    assert s.sched.metrics.value("sessions_resumed") == 1
    assert not page.js_errors
    await page.screenshot(path=ARTIFACTS / "speaker-resumed.png", full_page=True)


async def test_viewer_opened_mid_session_replays_then_follows_live(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-v", engines=test_engines(text="line {n}"))
    speaker = await new_page(browser, s.http)
    await _start_session(speaker, title="Town hall, 7 December", presenter="Mayor Ruiz")
    for i in range(2):
        await speaker.set_input_files("#file", str(_tone_wav(tmp_path, f"v{i}.wav", 0.3)))
        await speaker.wait_for_function(f"window.seen.results.length === {i + 1}")
    link = await speaker.get_attribute("#share-link", "href")
    assert link and "/view/room/" in link  # a room: it outlives the session
    viewer = await new_page(browser, s.http)
    await viewer.goto(link)
    await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 2")
    earlier = await viewer.locator("#subtitles p").all_inner_texts()
    assert all(t.startswith("[es] Line") for t in earlier)
    assert (
        await viewer.locator("h1").inner_text() == "Town hall, 7 December — Mayor Ruiz"
    )  # as the speaker named it
    await speaker.set_input_files("#file", str(_tone_wav(tmp_path, "v2.wav", 0.3)))
    await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 3", timeout=10_000)
    assert (await viewer.locator("#conn").get_attribute("data-state")) == "connected"
    # the language chooser names the languages a node serves, not just their codes
    assert await viewer.locator("#lang option").all_inner_texts() == [
        "English (en)",
        "Spanish (es)",
        "French (fr)",
    ]
    await viewer.screenshot(path=ARTIFACTS / "viewer.png", full_page=True)
    # a listener picks French: the session translates into it from the next utterance on
    await viewer.select_option("#lang", "fr")
    await viewer.wait_for_function(
        "document.querySelector('#notice').textContent.includes('Translating into French')"
    )
    assert "lang=fr" in viewer.url  # a reload keeps the choice
    await asyncio.sleep(1.1)  # (the session reads its listeners at most once a second)
    await speaker.set_input_files("#file", str(_tone_wav(tmp_path, "v3.wav", 0.3)))
    await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 1", timeout=10_000)
    assert (await viewer.locator("#subtitles p").all_inner_texts())[0].startswith("[fr] Line")
    assert await speaker.evaluate("window.seen.results.every(r => r.tgt_lang === 'es')")  # not the speaker's
    await viewer.screenshot(path=ARTIFACTS / "viewer-listener-language.png", full_page=True)
    # the session's own link names the event too
    sid = await speaker.evaluate("window.lm.session.sessionId")
    token = await speaker.evaluate("window.lm.session.viewToken")
    own = await new_page(browser, s.http)
    await own.goto(f"/view/{sid}?token={token}")
    await own.wait_for_function("document.title.startsWith('Town hall, 7 December — Mayor Ruiz')")
    assert await own.locator("h1").inner_text() == "Town hall, 7 December — Mayor Ruiz"
    # the session's own link with a wrong token is refused
    bad = await new_page(browser, s.http)
    await bad.goto(f"/view/{sid}?token=nope")
    await bad.wait_for_selector("#notice:not([hidden])", timeout=10_000)
    assert not viewer.js_errors and not speaker.js_errors


async def test_operator_page_lists_nodes_and_finished_jobs(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler(pending_timeout=0.3)
    node = await cluster.node(s.url, "op-node")
    page = await new_page(browser, s.http)
    await _start_session(page, title="Weekly meeting")
    await page.set_input_files("#file", str(_tone_wav(tmp_path, "a.wav", 0.3)))
    await page.wait_for_function("window.seen.results.length === 1")
    job_id = await page.evaluate("window.seen.results[0].job_id")
    admin = await new_page(browser, s.http)
    await admin.goto("/admin")
    await admin.wait_for_selector("#nodes td:text('op-node')")
    await admin.wait_for_selector(f"#recent a:text('{job_id}')")
    # the job id opens the job's record
    href = await admin.get_attribute(f"#recent a:text('{job_id}')", "href")
    record = await (await admin.request.get(href or "")).json()
    assert record["job_id"] == job_id and record["state"] == "completed"
    # the pool is named after the pairs the node serves, not every language it touches
    assert await admin.locator("#pools td").first.inner_text() == "en-es-fr"  # the test engines
    assert await admin.locator("#counters div").count() > 3
    assert "Sessions opened: 1" in await admin.locator("#counters").inner_text()  # in words
    # latency percentiles: the one job so far, from the end of its speech
    latency = await admin.locator("#latency tbody tr").first.locator("td").all_inner_texts()
    assert latency[:2] == ["End of speech → result", "1"] and latency[2].endswith(("ms", "s")), latency
    # health first: all good; the session with its event, languages and viewers
    assert await admin.get_attribute("#health", "data-status") == "ok"
    await open_viewer(browser, s.http, page)
    await admin.wait_for_function(
        "document.querySelector('#sessions tbody td:nth-child(4)')?.textContent === '1'"
    )
    row = await admin.locator("#sessions tbody tr").first.locator("td").all_inner_texts()
    assert row[1:5] == ["Weekly meeting", "en → es", "1", "connected"], row
    assert "· 1 live session ·" in await admin.locator("#conn .label").inner_text()
    await page.close()  # the speaker's tab closes: its session lingers for a resume, counted apart
    await admin.wait_for_function("document.querySelector('#conn .label').textContent.includes('(1 away)')")
    assert "0 live sessions (1 away)" in await admin.locator("#conn .label").inner_text()
    await admin.screenshot(path=ARTIFACTS / "operator.png", full_page=True)
    # the node goes: red, and why
    await node.stop()
    await admin.wait_for_function(
        "document.querySelector('#health').dataset.status === 'bad'", timeout=10_000
    )
    assert "no node is connected" in await admin.locator("#health-problems").inner_text()
    assert await admin.get_attribute("#conn", "data-state") == "offline"
    await admin.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
    assert await admin.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await admin.screenshot(path=ARTIFACTS / "operator-phone.png", full_page=True)
    assert not admin.js_errors


async def test_hands_free_mode_cuts_utterances_on_silence(cluster: Cluster, browser: Any) -> None:
    s = await cluster.scheduler(result_timeout=60)
    await cluster.node(s.url, "vad-node", engines=default_engines(), max_concurrent_jobs=1)
    page = await new_page(browser, s.http)
    await _start_session(page)
    await page.select_option("#mode", "free")
    await page.click("#listen")  # the fake microphone plays: speech, then 2.5 s of silence
    await page.wait_for_function("window.seen.ends >= 1", timeout=15_000)  # the page's VAD closed it
    row = page.locator("li.utt[data-status=ok]").first
    await row.wait_for(timeout=60_000)
    await page.click("#listen")
    asr = await row.locator(".asr").inner_text()
    assert wer(SPOKEN, asr) <= 0.35, asr
    assert first_words(asr) == first_words(SPOKEN), asr
    assert "museo" in (await row.locator(".mt").inner_text()).lower()
    assert not page.js_errors
    await page.screenshot(path=ARTIFACTS / "speaker-hands-free.png", full_page=True)


async def test_the_speaker_pages_room_is_the_commitment_to_its_key(cluster: Cluster, browser: Any) -> None:
    """The page's room is the first 22 characters of base64url(SHA-256(key)) (its own
    SHA-256: plain-http pages have no crypto.subtle): the server takes it, and the room
    shows the page's session to anyone."""
    import httpx

    from linguamesh.scheduler.sessions.rooms import room_of

    s = await cluster.scheduler()
    await cluster.node(s.url)
    page = await new_page(browser, s.http)
    sid = await _start_session(page)
    ids = await page.evaluate(
        "JSON.parse(Object.entries(sessionStorage).find(([k]) => k.endsWith('.room'))[1])"
    )
    assert ids["room"] == room_of(ids["key"]) and len(ids["key"]) == 32
    async with httpx.AsyncClient() as http:
        shown = (await http.get(f"{s.http}/api/v1/rooms/{ids['room']}")).json()
    assert shown["session_id"] == sid
    assert not page.js_errors


async def test_with_api_keys_the_speaker_page_sends_the_token_of_its_address(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    """With --api-keys, the page opened with ``?token=…`` (from the operator's backend)
    gets its session; opened without one, it is refused (and says so)."""
    import time

    import jwt

    secret = "browser-secret-" + "9" * 32
    keys = tmp_path / "keys"
    keys.write_text(f"web {secret}\n")
    s = await cluster.scheduler(api_keys=str(keys))
    await cluster.node(s.url)
    tok = jwt.encode(
        {"iss": "web", "sub": "page", "exp": int(time.time()) + 600, "grants": {"speak": True, "view": True}},
        secret,
        algorithm="HS256",
    )
    page = await new_page(browser, s.http)
    await page.goto(f"/?token={tok}")
    await page.wait_for_function("document.querySelectorAll('#src option').length > 0")
    await page.click("#start")
    await page.wait_for_selector("#conn[data-state=connected]")
    assert str(await page.evaluate("window.lm.session.sessionId")).startswith("s-")
    anonymous = await new_page(browser, s.http)
    await anonymous.goto("/")
    await anonymous.wait_for_function("document.querySelectorAll('#src option').length > 0")
    await anonymous.click("#start")
    await anonymous.wait_for_function(
        "document.querySelector('#notice') && document.querySelector('#notice').textContent.includes('token')"
    )


async def test_a_viewer_whose_server_freezes_says_the_connection_is_lost_and_comes_back(
    browser: Any, tmp_path: Path
) -> None:
    """The scheduler freezes (SIGSTOP): the viewer's socket looks open, but no heartbeat
    comes; the page says "connection lost" (within twice the heartbeat), opens a new stream
    once the server is back, and shows every subtitle once."""
    import signal

    from linguamesh.client import SessionClient

    from ..conftest import free_port, pcm
    from ..procs import launch, node_proc, wait_node, wait_ready

    port = free_port()
    sched = launch("scheduler", "--port", str(port), log=tmp_path / "s.log",
                   env={"LINGUAMESH_VIEWER_HEARTBEAT": "0.5"})  # fmt: skip
    http, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    try:
        await wait_ready(port, sched)
        async with node_proc(tmp_path, ws, "node-f"), SessionClient(ws, src="en", tgt="es") as c:
            await wait_node(http, "node-f")
            await c.send_utterance(0, pcm(0.2))
            await c.next_result(10 * SCALE)
            assert c.ack is not None
            viewer = await new_page(browser, http)
            await viewer.goto(f"/view/{c.session_id}?token={c.ack.view_token}")
            await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 1")
            await viewer.wait_for_selector("#conn[data-state=connected]")
            await asyncio.sleep(1.5)  # a quiet stream: the page hears heartbeats (every 0.5 s here)
            sched.proc.send_signal(signal.SIGSTOP)
            try:
                await viewer.wait_for_selector("#conn[data-state=lost]", timeout=5_000)
                problems = await check_accessibility(viewer, "viewer-connection-lost", "light")
            finally:
                sched.proc.send_signal(signal.SIGCONT)
            assert not problems, problems
            await viewer.wait_for_selector("#conn[data-state=connected]", timeout=10_000)
            await c.send_utterance(1, pcm(0.2))
            await c.next_result(10 * SCALE)
            await viewer.wait_for_function(
                "document.querySelectorAll('#subtitles p').length === 2", timeout=10_000
            )
            await asyncio.sleep(1.0)  # (anything replayed twice would show by now)
            assert len(await viewer.locator("#subtitles p").all_inner_texts()) == 2
            assert not viewer.js_errors
    finally:
        sched.stop()


async def test_a_viewer_sees_that_the_speaker_pauses_and_a_gap_for_a_failed_utterance(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler()
    # the jobs fail for good (bad_audio is not retried)
    await cluster.node(s.url, "node-gap", engines=test_engines(fail="bad_audio"))
    speaker = await new_page(browser, s.http)
    await _start_session(speaker)
    viewer = await open_viewer(browser, s.http, speaker)
    assert await viewer.locator("#activity").inner_text() == "paused"
    await speaker.set_input_files("#file", str(_tone_wav(tmp_path, "g.wav", 0.3)))
    await speaker.wait_for_function("window.seen.results.length === 1")
    await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 1", timeout=10_000)
    lines = await viewer.locator("#subtitles p").all_inner_texts()
    assert lines == ["[a sentence could not be translated]"], lines
    assert await viewer.locator("#subtitles p.gap").count() == 1
    await viewer.screenshot(path=ARTIFACTS / "viewer-gap.png", full_page=True)
    assert not await check_accessibility(viewer, "viewer-gap", "light")
    assert not viewer.js_errors


async def test_a_listener_hears_the_translation_and_a_projector_shows_the_last_lines_large(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-listen", engines=test_engines(text="line {n}", tts_seconds=0.3))
    speaker = await new_page(browser, s.http)
    await _start_session(speaker)
    await speaker.uncheck("#autoplay")  # the speaker's laptop stays quiet
    viewer = await open_viewer(
        browser,
        s.http,
        speaker,
        "window.played = 0; addEventListener('DOMContentLoaded', () => window.lmView.playback"
        ".addEventListener('play', () => { window.played += 1; }))",
    )
    assert "audio=1" not in await viewer.evaluate("window.lmView.stream.url()")  # no speech unless asked
    await viewer.check("#listen")
    await viewer.wait_for_function("window.lmView.stream.url().includes('audio=1')")
    await viewer.wait_for_selector("#conn[data-state=connected]")
    for i in range(3):
        await speaker.set_input_files("#file", str(_tone_wav(tmp_path, f"l{i}.wav", 0.3)))
        await speaker.wait_for_function(f"window.seen.results.length === {i + 1}")
    await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 3", timeout=10_000)
    await viewer.wait_for_function("window.played >= 1", timeout=10_000)  # the translated voice plays
    # text size, then the projector: the last lines large, the controls away
    base = await viewer.evaluate(
        "parseFloat(getComputedStyle(document.querySelector('#subtitles')).fontSize)"
    )
    await viewer.select_option("#size", "2")
    bigger = await viewer.evaluate(
        "parseFloat(getComputedStyle(document.querySelector('#subtitles')).fontSize)"
    )
    assert bigger == 2 * base
    await viewer.click("#projector")
    assert await viewer.evaluate("document.body.classList.contains('projector')")
    assert not await viewer.locator("#lang").is_visible() and await viewer.locator("#subtitles").is_visible()
    await viewer.screenshot(path=ARTIFACTS / "viewer-projector.png", full_page=True)
    await viewer.click("#projector")
    assert await viewer.locator("#lang").is_visible()
    assert not viewer.js_errors
