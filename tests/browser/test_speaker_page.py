"""The speaker page a person can rely on: reloads and server restarts keep the
session or start a new one cleanly, clips play one at a time, taps and Space do what a
person expects. Real Chromium, real scheduler and nodes on loopback."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from ..conftest import SCALE, Cluster, free_port, test_engines, transcript_lines
from ..procs import node_proc, start_scheduler_process, wait_node
from .conftest import ARTIFACTS, check_accessibility, new_page, open_viewer
from .test_pages import _start_session, _tone_wav


@pytest.mark.parametrize("window", [1000, 4], ids=["window-holds-all", "longer-than-the-window"])
async def test_a_reload_mid_session_resumes_it_with_every_row(
    cluster: Cluster, browser: Any, tmp_path: Path, window: int
) -> None:
    """With a replay window of 4 events, the first row comes back from the transcript."""
    s = await cluster.scheduler(history_size=window)
    await cluster.node(s.url, "node-r", engines=test_engines())
    page = await new_page(browser, s.http)
    sid = await _start_session(page)
    for i in range(2):
        await page.set_input_files("#file", str(_tone_wav(tmp_path, f"r{i}.wav", 0.3 + 0.1 * i)))
        await page.wait_for_function(f"window.seen.results.length === {i + 1}")
    await page.reload()
    await page.wait_for_selector("#conn[data-state=connected]")
    await page.wait_for_function("document.querySelectorAll('li.utt[data-status=ok]').length === 2")
    assert await page.evaluate("window.lm.session.sessionId") == sid  # the same session
    texts = await page.locator("li.utt .asr").all_inner_texts()
    assert texts == ["Test utterance 0.30.", "Test utterance 0.40."]
    await page.set_input_files("#file", str(_tone_wav(tmp_path, "r2.wav", 0.5)))  # and it goes on
    await page.wait_for_function("document.querySelectorAll('li.utt[data-status=ok]').length === 3")
    assert await page.locator("li.utt").count() == 3
    assert not page.js_errors


async def test_two_results_arriving_together_play_one_after_the_other(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler()
    await cluster.node(
        s.url, "node-p", engines=test_engines(tts_seconds=0.8, delay_ms=100), max_concurrent_jobs=2
    )
    page = await new_page(browser, s.http)
    await _start_session(page)
    for i in range(2):  # both jobs run at once and finish together
        await page.set_input_files("#file", str(_tone_wav(tmp_path, f"p{i}.wav", 0.3)))
    await page.wait_for_function("window.seen.played.length >= 2", timeout=int(10_000 * SCALE))
    played = await page.evaluate("window.seen.played")
    assert [p["index"] for p in played] == [0, 1]
    first, second = played
    assert first["end"] - first["start"] >= 600  # really played (0.8 s clip), not skipped
    assert second["start"] >= first["end"] - 5  # the second began when the first ended
    assert not page.js_errors


async def test_a_tap_sends_nothing_and_space_talks_anywhere_on_the_page(
    cluster: Cluster, browser: Any
) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-t", engines=test_engines())
    page = await new_page(browser, s.http)
    assert await page.goto("/") and await page.get_attribute("#conn", "data-state") is not None
    assert await page.get_attribute("#conn", "data-state") == "ready"  # not a red "not connected"
    await _start_session(page)
    await page.evaluate("window.lm.talkStart()")
    await asyncio.sleep(0.1)
    await page.evaluate("window.lm.talkStop()")  # a 100 ms tap
    await asyncio.sleep(0.3)
    assert await page.evaluate("window.lm.session.chunkSeq") == 0  # nothing sent
    assert await page.locator("li.utt").count() == 0  # no empty row
    assert "Hold the button" in await page.inner_text("#notice")
    await page.click("#notice .dismiss")
    assert await page.is_hidden("#notice")
    await page.focus("body")
    await page.keyboard.down("Space")  # push-to-talk from anywhere, not only the button
    await page.wait_for_selector("#rec:not([hidden])")
    await asyncio.sleep(0.8)
    await page.keyboard.up("Space")
    assert await page.is_hidden("#rec")
    await page.wait_for_function("document.querySelectorAll('li.utt[data-status=ok]').length === 1")
    assert await page.evaluate("window.seen.ends") == 1
    assert not page.js_errors


async def test_a_server_killed_and_restarted_leaves_no_row_processing_and_loses_no_offline_speech(
    browser: Any, tmp_path: Path
) -> None:
    port = free_port()
    _, sched = await start_scheduler_process("--log", "debug", port=port, log=tmp_path / "s1.log")
    http = f"http://127.0.0.1:{port}"
    try:
        async with node_proc(tmp_path, f"ws://127.0.0.1:{port}", "node-k", delay_ms=1500):
            await wait_node(http, "node-k")
            page = await new_page(browser, http)
            await _start_session(page)
            viewer = await open_viewer(browser, http, page)  # follows the share link (a room)
            await page.set_input_files("#file", str(_tone_wav(tmp_path, "k0.wav", 0.3)))
            await page.wait_for_selector("li.utt[data-status=processing]")  # in flight on the node
            sched.proc.send_signal(signal.SIGKILL)
            sched.proc.wait()
            killed = asyncio.get_running_loop().time()
            await page.wait_for_selector("#conn[data-state=reconnecting]")
            # the viewer says so within 10 s (not "live", not "waiting for the speaker")
            await viewer.wait_for_function(
                "document.querySelector('#conn .label').textContent.startsWith('connection lost')",
                timeout=10_000,
            )
            assert asyncio.get_running_loop().time() - killed < 10
            # recorded while the server is away: waits in the page
            await page.set_input_files("#file", str(_tone_wav(tmp_path, "k1.wav", 0.7)))
            _, sched = await start_scheduler_process("--log", "debug", port=port, log=tmp_path / "s2.log")
            await page.wait_for_selector("#conn[data-state=connected]", timeout=int(20_000 * SCALE))
            await page.wait_for_selector("li.utt[data-gen='1'][data-status=ok]", timeout=int(30_000 * SCALE))
            # ... and comes back, following the speaker's new session in the room
            await viewer.wait_for_selector("#conn[data-state=connected]", timeout=int(20_000 * SCALE))
            await asyncio.sleep(0.5)
            old = await page.locator("li.utt[data-gen='0']").all()
            assert len(old) == 1 and await old[0].get_attribute("data-status") == "ended"
            new = page.locator("li.utt[data-gen='1']")
            assert await new.count() == 1
            # the offline utterance, translated in the new session's row 0
            # (repaired, "Test utterance 0.70.", when the node was back before the utterance
            # was accepted; the repair stage is chosen from the nodes connected then)
            asr = await new.locator(".asr").inner_text()
            assert asr.lower().rstrip(".") == "test utterance 0.70", asr
            assert await page.locator("li.utt[data-status=processing]").count() == 0
            assert "new one started" in await page.inner_text("#notice")
            assert await page.locator("li.divider").count() == 1
            # the viewer followed the speaker to the new session, on the same link
            await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 1")
            assert (await viewer.inner_text("#subtitles p")).lower().rstrip(".") == "[es] test utterance 0.70"
            sessions = await viewer.evaluate("window.lmView.sessions")
            assert sessions[-1] == await page.evaluate("window.lm.session.sessionId") and len(sessions) == 2
            assert not viewer.js_errors
            await page.screenshot(path=ARTIFACTS / "speaker-server-restarted.png", full_page=True)
            assert not page.js_errors
    finally:
        sched.stop()


async def test_transcript_downloads_on_both_pages_parse_and_match(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    import io

    import srt
    import webvtt

    s = await cluster.scheduler()
    await cluster.node(s.url, "node-d", engines=test_engines(text="line {seconds}"))
    page = await new_page(browser, s.http)
    await _start_session(page)
    for i in range(2):
        await page.set_input_files("#file", str(_tone_wav(tmp_path, f"d{i}.wav", 0.3 + 0.2 * i)))
        await page.wait_for_function(f"window.seen.results.length === {i + 1}")
    results = await page.evaluate("window.seen.results.map(r => [r.text_asr, r.text_translated])")
    srt_link = await page.get_attribute("#downloads a[data-format=srt][data-lang=es]", "href")
    vtt_link = await page.get_attribute("#downloads a[data-format=vtt][data-lang=en]", "href")
    assert srt_link and vtt_link
    subs = list(srt.parse(await (await page.request.get(srt_link)).text()))
    assert [x.content for x in subs] == [mt for _, mt in results]
    vtt = await (await page.request.get(vtt_link)).text()
    assert [c.text for c in webvtt.from_buffer(io.StringIO(vtt)).captions] == [asr for asr, _ in results]
    # the viewer offers the same downloads for its language
    viewer = await new_page(browser, s.http)
    await viewer.goto(await page.get_attribute("#share-link", "href") or "")
    await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 2")
    txt = await (await viewer.request.get(await viewer.get_attribute("#dl-txt", "href") or "")).text()
    head, _, body = txt.partition("\n\n")
    assert "translation from en, in es" in head and "Started " in head  # whose, when, which languages
    assert transcript_lines(txt) == [mt for _, mt in results]
    assert all(line.startswith("[00:00:") for line in body.splitlines())  # each line's time
    assert not page.js_errors and not viewer.js_errors


async def test_end_session_then_start_a_new_one(cluster: Cluster, browser: Any, tmp_path: Path) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-e", engines=test_engines())
    page = await new_page(browser, s.http)
    first = await _start_session(page)
    await page.set_input_files("#file", str(_tone_wav(tmp_path, "e0.wav", 0.3)))
    await page.wait_for_function("window.seen.results.length === 1")
    dialogs: list[str] = []

    async def answer(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await (dialog.dismiss() if len(dialogs) == 1 else dialog.accept())

    page.on("dialog", answer)
    await page.click("#end")  # asked first: "no" keeps the session
    await asyncio.sleep(0.3)
    assert await page.get_attribute("#conn", "data-state") == "connected" and len(dialogs) == 1
    assert await page.evaluate("window.lm.mic.open")  # asked for at Start session
    await page.click("#end")  # "yes"
    await page.wait_for_selector("#setup:not([hidden])")  # after the session_closed
    assert await page.get_attribute("#conn", "data-state") == "offline"
    assert await page.inner_text("#conn .label") == "session ended"
    assert await page.evaluate("sessionStorage.getItem('linguamesh.session')") is None
    # what the organiser wants now stays: the transcript and the viewer link; the
    # microphone is released, and the focus is on the next thing to do
    assert await page.is_visible("#transcript") and await page.is_visible("#share")
    assert "transcript" in (await page.get_attribute("#downloads a[data-format=srt]", "href") or "")
    assert not await page.evaluate("window.lm.mic.open")
    assert await page.evaluate("document.activeElement.id") == "start"
    room_txt = await page.get_attribute("#downloads a[data-room][data-format=txt]", "href")
    await page.click("#start")
    await page.wait_for_selector("#conn[data-state=connected]")
    second = await page.evaluate("window.lm.session.sessionId")
    assert second != first
    await page.set_input_files("#file", str(_tone_wav(tmp_path, "e1.wav", 0.5)))
    await page.wait_for_selector("li.utt[data-gen='1'][data-status=ok]")
    assert await page.locator("li.utt[data-gen='0'][data-status=ok]").count() == 1  # the old row stays
    assert await page.inner_text("li.utt[data-gen='1'] .asr") == "Test utterance 0.50."
    # the whole event: both sessions of the room, in one download, on one clock
    await page.wait_for_function("window.seen.results.length === 2")
    assert room_txt and room_txt == await page.get_attribute(
        "#downloads a[data-room][data-format=txt]", "href"
    )
    event = await (await page.request.get(room_txt)).text()
    head = event.partition("\n\n")[0]
    assert "(2 sessions)" in head, event
    assert transcript_lines(event) == [
        "[es] Test utterance 0.30.",
        "[es] Test utterance 0.50.",
    ]
    assert not page.js_errors


async def test_space_on_a_focused_control_works_the_control_not_the_microphone(
    cluster: Cluster, browser: Any
) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-sp", engines=test_engines())
    page = await new_page(browser, s.http)
    await _start_session(page)
    await page.focus("#autoplay")
    before = await page.is_checked("#autoplay")
    await page.keyboard.press("Space")  # toggles the checkbox (WCAG 2.1.1)
    assert await page.is_checked("#autoplay") != before
    await page.focus("#copy")
    await page.keyboard.down("Space")
    await asyncio.sleep(0.6)
    await page.keyboard.up("Space")
    assert await page.is_hidden("#rec")
    assert (
        await page.evaluate("window.seen.ends") == 0
        and await page.evaluate("window.lm.session.chunkSeq") == 0
    )
    assert not page.js_errors


async def test_a_release_while_the_browser_asks_for_the_microphone_records_nothing(
    cluster: Cluster, browser: Any
) -> None:
    """The permission race: the speaker releases the button to answer the browser's
    question; no recording may start afterwards with nobody holding the button."""
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-pr", engines=test_engines())
    page = await new_page(browser, s.http)
    await page.add_init_script(  # the browser's question takes a second to answer
        """const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
        window.micAsks = 0;
        navigator.mediaDevices.getUserMedia = async (c) => {
          window.micAsks += 1; await new Promise((r) => setTimeout(r, 1000)); return real(c); };"""
    )
    await page.goto("/")
    await page.wait_for_function("document.querySelectorAll('#src option').length > 0")
    await page.click("#start")  # asked here, at Start session
    await page.evaluate("window.lm.talkStart()")  # pressed while the question is open...
    await page.evaluate("window.lm.talkStop()")  # ... and released to answer it
    await page.wait_for_selector("#conn[data-state=connected]")
    await asyncio.sleep(1.5)
    assert await page.is_hidden("#rec")
    assert await page.evaluate("window.micAsks") == 1
    assert await page.evaluate("window.lm.session.chunkSeq") == 0
    assert not page.js_errors


async def test_a_long_session_scrolls_to_the_newest_row_and_hides_operator_ids(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-sc", engines=test_engines())
    page = await new_page(browser, s.http)
    await page.set_viewport_size({"width": 400, "height": 500})  # a phone
    await _start_session(page)
    for i in range(8):
        await page.set_input_files("#file", str(_tone_wav(tmp_path, f"sc{i}.wav", 0.3)))
        await page.wait_for_function(f"window.seen.results.length === {i + 1}")
    await asyncio.sleep(0.3)
    last = page.locator("li.utt").last
    box = await last.bounding_box()
    assert box is not None and 0 <= box["y"] < 500, box  # the newest row is in view
    text = await page.inner_text("#utterances")
    assert "trace" not in text and "job-" not in text  # operator data is in a tooltip only
    assert "job-" in (await last.get_attribute("title") or "")
    assert await page.get_attribute("#utterances", "aria-live") is None  # partials are not re-announced
    assert (await page.inner_text("#announce")).strip()  # the newest translation is
    assert await page.get_attribute("li.utt .asr", "lang") == "en"
    assert not page.js_errors


async def test_a_reload_keeps_hands_free_listening_and_says_so(cluster: Cluster, browser: Any) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-hf", engines=test_engines())
    page = await new_page(browser, s.http)
    await _start_session(page)
    await page.select_option("#mode", "free")
    await page.click("#listen")
    await page.wait_for_selector("#rec:not([hidden])")
    await page.reload()
    await page.wait_for_selector("#conn[data-state=connected]")
    assert await page.input_value("#mode") == "free"
    await page.wait_for_selector("#notice:not([hidden])")
    assert "Hands-free listening" in await page.inner_text("#notice")
    # this browser lets the page open the microphone again (the tests' Chromium does)
    await page.wait_for_selector("#rec:not([hidden])")
    assert not page.js_errors


async def test_translations_wait_while_the_microphone_is_open_and_stale_ones_are_skipped(
    cluster: Cluster, browser: Any
) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-v", engines=test_engines(tts_seconds=0.3))
    page = await new_page(browser, s.http)
    await _start_session(page)
    await page.evaluate("window.lm.playback.maxLagMs = 1000")
    await page.select_option("#mode", "free")
    await page.click("#listen")  # hands-free: the microphone stays open
    await page.wait_for_function("window.seen.results.length >= 1", timeout=int(20_000 * SCALE))
    await asyncio.sleep(1.5)
    assert await page.evaluate("window.seen.played.length") == 0  # not over the speaker's voice
    await page.click("#listen")  # stop listening: the clip is too late to be worth hearing
    await page.wait_for_selector("#player:not([hidden])")
    assert "Skipped" in await page.inner_text("#now-playing")
    assert 0 not in [p["index"] for p in await page.evaluate("window.seen.played")]
    assert not page.js_errors


async def test_a_file_over_the_intake_limit_is_paced_and_what_is_refused_is_said(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler(session_audio_per_s=0.2, session_audio_burst=2.0)
    await cluster.node(s.url, "node-f", engines=test_engines())
    page = await new_page(browser, s.http)
    await _start_session(page)
    await page.set_input_files("#file", str(_tone_wav(tmp_path, "f0.wav", 3.0)))  # over the burst: charged
    await page.wait_for_function("window.seen.results.length === 1")
    await page.set_input_files("#file", str(_tone_wav(tmp_path, "f1.wav", 1.0)))  # refused: said so
    await page.wait_for_function("document.querySelector('#notice').innerText.includes('refused')")
    text = await page.inner_text("#notice")
    assert "f1.wav" in text and "rate_limited" in text, text
    assert not page.js_errors


async def test_a_pair_no_node_serves_any_more_is_said_at_start_session(
    cluster: Cluster, browser: Any
) -> None:
    """The page offered en->es while a node served it; the node left before Start
    session: the page says so at once (it said nothing until the first utterance failed)."""
    s = await cluster.scheduler(pending_timeout=10)
    node = await cluster.node(s.url, "node-gone", engines=test_engines())
    page = await new_page(browser, s.http)
    await page.goto("/")
    await page.wait_for_function("document.querySelectorAll('#tgt option').length > 0")
    await page.select_option("#tgt", "es")
    await node.stop()
    await page.click("#start")
    await page.wait_for_selector("#conn[data-state=connected]")
    notice = page.locator("#notice")
    await notice.wait_for(state="visible", timeout=5000)
    text = await notice.inner_text()
    assert "no node serves en->es now; no node is connected" in text and "wait up to 10 s" in text, text
    await page.screenshot(path=ARTIFACTS / "speaker-unserved-pair.png", full_page=True)
    assert not await check_accessibility(page, "speaker-unserved-pair", "light")
    assert not page.js_errors


async def test_the_viewer_link_has_a_copy_button_and_a_qr_code_that_reads_back_to_it(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    import httpx
    from PIL import Image
    from pyzbar.pyzbar import decode

    s = await cluster.scheduler()
    await cluster.node(s.url, "node-qr", engines=test_engines())
    page = await new_page(browser, s.http)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=s.http)
    await _start_session(page)
    link = await page.locator("#share-link").get_attribute("href")
    assert link and "/view/room/" in link
    qr = page.locator("#share-qr")
    await page.wait_for_function("document.querySelector('#share-qr').naturalWidth > 0")
    await qr.screenshot(path=tmp_path / "qr.png")
    (code,) = decode(Image.open(tmp_path / "qr.png"))
    assert code.type == "QRCODE" and code.data.decode() == link
    await page.click("#copy-link")
    assert await page.evaluate("navigator.clipboard.readText()") == link
    assert "on the clipboard" in await page.locator("#notice").inner_text()
    await page.screenshot(path=ARTIFACTS / "speaker-share.png", full_page=True)
    assert not await check_accessibility(page, "speaker-share", "light")
    assert not page.js_errors
    async with httpx.AsyncClient(base_url=s.http) as http:  # only viewer links are drawn
        for bad in ("", "javascript:alert(1)", "https://example.org/other", "http://x/view/" + "a" * 600):
            r = await http.get("/api/v1/qr.svg", params={"link": bad})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_message", (bad, r.text)


async def test_the_microphone_is_tested_before_going_live(cluster: Cluster, browser: Any) -> None:
    """The fake microphone plays speech: the test's meter moves, the page says the
    microphone works, and the microphone is released again; nothing reaches the server."""
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-mic", engines=test_engines())
    page = await new_page(browser, s.http)
    await page.goto("/")
    await page.wait_for_function("document.querySelectorAll('#src option').length > 0")
    await page.click("#mic-test")
    await page.wait_for_function(
        "Number(document.querySelector('#test-level').getAttribute('aria-valuenow')) > 0", timeout=5000
    )
    await page.screenshot(path=ARTIFACTS / "speaker-mic-test.png", full_page=True)
    problems = await check_accessibility(page, "speaker-mic-test", "light")
    await page.click("#mic-test")  # stop the test
    assert await page.locator("#mic-test-note").inner_text() == "Your microphone works."
    assert await page.locator("#test-level").is_hidden()
    problems += await check_accessibility(page, "speaker-mic-tested", "light")
    assert not problems, problems
    await page.wait_for_function("!window.lm.mic.ctx")  # released
    assert s.sched.metrics.value("sessions_created") == 0
    await _start_session(page)  # and the session then records as usual
    assert await page.evaluate("Boolean(window.lm.mic.ctx)")
    assert not page.js_errors
