"""An audience, as a class or a meeting uses LinguaMesh: a speaker, listeners on phones who
each pick a language (one of them listens to the translated voice), and the operator page.
The test engine set serves four languages; the node is in this process, so the test reads
how often it ran ASR."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ..conftest import Cluster, test_engines
from .conftest import ARTIFACTS, check_accessibility, new_page, open_viewer
from .test_pages import _start_session, _tone_wav

PHONE = {"width": 390, "height": 844}
#: Counts the clips the listener's page plays (before the page's own scripts).
PLAYED = (
    "window.played = 0; addEventListener('DOMContentLoaded', () => window.lmView.playback"
    ".addEventListener('play', () => { window.played += 1; }))"
)


async def _listener(browser: Any, base: str, speaker: Any, lang: str, listen: bool) -> Any:
    viewer = await open_viewer(browser, base, speaker, PLAYED)
    await viewer.set_viewport_size(PHONE)
    if await viewer.input_value("#lang") != lang:  # (the share link opens on the speaker's)
        await viewer.select_option("#lang", lang)
        await viewer.wait_for_function(
            "document.querySelector('#notice').textContent.startsWith('Translating into')"
        )
    if listen:
        await viewer.check("#listen")
        await viewer.wait_for_function("window.lmView.stream.url().includes('audio=1')")
    await viewer.wait_for_selector("#conn[data-state=connected]")
    return viewer


async def _subtitles(viewer: Any) -> list[str]:
    return list(await viewer.locator("#subtitles p").all_inner_texts())


async def test_listeners_on_phones_each_get_their_language_and_the_node_hears_each_utterance_once(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    s = await cluster.scheduler()
    node = await cluster.node(
        s.url,
        "node-room",
        engines=test_engines(languages=["en", "es", "fr", "de"], text="line {seconds}", tts_seconds=0.3),
        max_concurrent_jobs=8,
    )
    speaker = await new_page(browser, s.http)
    await _start_session(speaker, title="Physics 101, lecture 4", presenter="Prof. Okafor")
    await speaker.uncheck("#autoplay")  # the lecture hall's speakers stay quiet
    fr = await _listener(browser, s.http, speaker, "fr", listen=False)
    de = await _listener(browser, s.http, speaker, "de", listen=True)
    problems = await check_accessibility(fr, "audience-viewer-language", "light")
    await asyncio.sleep(1.1)  # (the session reads its listeners at most once a second)
    utterances = 3
    for i in range(utterances):
        await speaker.set_input_files("#file", str(_tone_wav(tmp_path, f"r{i}.wav", 0.3 + 0.1 * i)))
        await speaker.wait_for_function(f"window.seen.results.length === {i + 1}")
    for viewer in (fr, de):
        await viewer.wait_for_function(
            f"document.querySelectorAll('#subtitles p').length === {utterances}", timeout=10_000
        )
    await de.wait_for_function("window.played >= 1", timeout=10_000)  # the listener hears it
    await asyncio.sleep(1.0)  # (anything doubled would show by now)
    # each gets its own language, every utterance once (0 lost, 0 duplicated)
    fr_lines, de_lines = await _subtitles(fr), await _subtitles(de)
    assert [t.split()[0] for t in fr_lines] == ["[fr]"] * utterances, fr_lines
    assert [t.split()[0] for t in de_lines] == ["[de]"] * utterances, de_lines
    assert len(set(fr_lines)) == len(set(de_lines)) == utterances  # (each utterance its own length)
    for viewer, lang in ((fr, "fr"), (de, "de")):
        indices = await viewer.evaluate(
            f"[...window.lmView.results.values()].filter(r => r.tgt_lang === '{lang}').map(r => r.utterance_index)"
        )
        assert sorted(indices) == list(range(utterances)), indices
    # only the listener gets speech; the speaker gets only its own language
    assert await de.evaluate("[...window.lmView.results.values()].every(r => r.tts_audio)")
    assert await fr.evaluate("[...window.lmView.results.values()].every(r => !r.tts_audio)")
    assert await fr.evaluate("window.played") == 0
    mine = await speaker.evaluate("window.seen.results.map(r => [r.utterance_index, r.tgt_lang])")
    assert sorted(mine) == [[i, "es"] for i in range(utterances)]
    # the node ran ASR once per utterance for its three languages
    heard = node.agent.transcripts
    assert (heard.runs, heard.shared) == (utterances, 2 * utterances), (heard.runs, heard.shared)
    # the phone layout holds, the event is named, each state is accessible
    for viewer in (fr, de):
        assert await viewer.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert await viewer.locator("h1").inner_text() == "Physics 101, lecture 4 — Prof. Okafor"
    await speaker.set_viewport_size({"width": 1100, "height": PHONE["height"]})
    await speaker.evaluate("window.scrollTo(0, 0)")
    await speaker.screenshot(path=ARTIFACTS / "audience-speaker.png")
    await fr.screenshot(path=ARTIFACTS / "audience-fr-phone.png")
    await de.screenshot(path=ARTIFACTS / "audience-de-listening-phone.png")
    _side_by_side(
        ["audience-speaker.png", "audience-fr-phone.png", "audience-de-listening-phone.png"], "audience.png"
    )
    problems += await check_accessibility(de, "audience-viewer-listening", "light")
    await de.emulate_media(color_scheme="dark")
    await de.click("#projector")
    problems += await check_accessibility(de, "audience-viewer-projector", "dark")
    admin = await new_page(browser, s.http)
    await admin.goto("/admin")
    await admin.wait_for_function(
        "document.querySelector('#sessions tbody td:nth-child(4)')?.textContent === '2'"
    )
    row = await admin.locator("#sessions tbody tr").first.locator("td").all_inner_texts()
    assert row[1:4] == ["Physics 101, lecture 4 — Prof. Okafor", "en → es + listeners: de, fr", "2"], row
    problems += await check_accessibility(admin, "audience-admin", "light")
    problems += await check_accessibility(speaker, "audience-speaker", "light")
    assert not problems, problems
    for page in (speaker, fr, de, admin):
        assert not page.js_errors


def _side_by_side(names: list[str], out: str) -> None:
    """One picture of the room: the speaker's page and the listeners' phones (the README's)."""
    from PIL import Image

    shots = [Image.open(ARTIFACTS / n).convert("RGB") for n in names]
    height = max(im.height for im in shots)
    gap = 24
    canvas = Image.new(
        "RGB", (sum(im.width for im in shots) + gap * (len(shots) + 1), height + 2 * gap), "#c9c9c2"
    )
    x = gap
    for im in shots:
        canvas.paste(im, (x, gap))
        x += im.width + gap
    canvas.save(ARTIFACTS / out, optimize=True)


async def test_with_the_real_engines_only_the_listener_gets_the_spanish_voice(
    cluster: Cluster, browser: Any, spoken_wav: Path
) -> None:
    """The default engines (Whisper, Apertium, Piper) for en→es: a listener's phone plays
    the Spanish voice; a reader's phone gets the same subtitles and no speech at all."""
    from linguamesh.node.defaults import default_engines

    s = await cluster.scheduler(result_timeout=60)
    await cluster.node(s.url, "node-real", engines=default_engines(), max_concurrent_jobs=2)
    speaker = await new_page(browser, s.http)
    await _start_session(speaker, title="Visitor briefing")
    await speaker.uncheck("#autoplay")
    listener = await _listener(browser, s.http, speaker, "es", listen=True)
    reader = await _listener(browser, s.http, speaker, "es", listen=False)
    await speaker.set_input_files("#file", str(spoken_wav))
    await speaker.wait_for_function("window.seen.results.some(r => r.status === 'ok')", timeout=60_000)
    for viewer in (listener, reader):
        await viewer.wait_for_function(
            "document.querySelectorAll('#subtitles p').length >= 1", timeout=20_000
        )
        assert "museo" in " ".join(await _subtitles(viewer)).lower()
    await listener.wait_for_function("window.played >= 1", timeout=20_000)
    clip = await listener.evaluate("[...window.lmView.results.values()].map(r => (r.tts_audio || '').length)")
    assert all(n > 10_000 for n in clip), clip  # real speech (base64 WAV), not a placeholder
    assert await reader.evaluate("[...window.lmView.results.values()].every(r => !r.tts_audio)")
    assert await reader.evaluate("window.played") == 0
    await listener.screenshot(path=ARTIFACTS / "audience-real-listener-phone.png")
    for page in (speaker, listener, reader):
        assert not page.js_errors
