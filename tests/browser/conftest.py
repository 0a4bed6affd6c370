"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SPOKEN = "Good morning. I would like to buy two tickets to the museum, please."


@pytest.fixture(scope="session")
def spoken_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spoken sentence with silence around it, as Chromium's fake microphone input."""
    import numpy as np
    import soundfile as sf

    from linguamesh.audio import to_float32

    raw = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "165", "--stdout", SPOKEN], capture_output=True, check=True
    ).stdout
    speech = to_float32(raw, "wav", 16000)
    silence = np.zeros(int(0.4 * 16000), np.float32)
    tail = np.zeros(int(2.5 * 16000), np.float32)
    path = tmp_path_factory.mktemp("audio") / "spoken.wav"
    sf.write(path, np.concatenate([silence, speech, tail]), 16000, subtype="PCM_16")
    return path


@pytest.fixture
async def browser(spoken_wav: Path) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/setup.sh test (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={spoken_wav}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield b
        finally:
            await b.close()


#: Runs before the page's scripts: records what the SDK's objects announce (each session's
#: results, captions and utterance ends, the playback queue's clips) in ``window.seen``,
#: so tests listen to the SDK's events instead of reading the page's own state.
RECORDER = """
const seen = window.seen = { results: [], captions: 0, ends: 0, played: [] };
let lm;
Object.defineProperty(window, "lm", { configurable: true, get: () => lm, set: (value) => {
  lm = value;
  value.addEventListener("session", (e) => {
    e.detail.addEventListener("result", (r) => seen.results.push(r.detail));
    e.detail.addEventListener("caption", () => { seen.captions += 1; });
    e.detail.addEventListener("utterance-end", () => { seen.ends += 1; });
  });
  value.playback.addEventListener("ended", (e) => seen.played.push(e.detail));
} });
"""


async def new_page(browser: object, base: str) -> object:
    ctx = await browser.new_context(permissions=["microphone"], base_url=base)  # type: ignore[attr-defined]
    await ctx.add_init_script(RECORDER)
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors
    return page


async def open_viewer(browser: object, base: str, speaker: Any, init_script: str | None = None) -> Any:
    """A viewer page on the speaker page's share link (a room), once its stream is live;
    ``init_script`` runs in it before the page's own scripts."""
    viewer: Any = await new_page(browser, base)
    if init_script is not None:
        await viewer.add_init_script(init_script)
    await viewer.goto(str(await speaker.get_attribute("#share-link", "href")))
    await viewer.wait_for_selector("#conn[data-state=connected]")
    return viewer


#: axe-core (from npm, run inside the page): serious or critical violations only.
AXE = Path(__file__).resolve().parents[2] / ".venv" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS = """axe.run(document, {resultTypes: ['violations']}).then(r => r.violations
  .filter(v => ['serious', 'critical'].includes(v.impact))
  .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})))"""


async def check_accessibility(page: Any, name: str, scheme: str) -> list[Any]:
    """The page's serious and critical axe-core violations as it is now, as (name, scheme,
    violation); screenshots at 1280 and 390 px in the test artifacts (the page is left at
    390 px wide)."""
    if not AXE.exists():
        pytest.fail("axe-core is not installed: run scripts/setup.sh test (npm install axe-core)")
    await page.add_script_tag(path=str(AXE))
    found = await page.evaluate(SERIOUS)
    for width, height in ((1280, 900), (390, 844)):
        await page.set_viewport_size({"width": width, "height": height})
        await page.screenshot(path=ARTIFACTS / f"{name}-{scheme}-{width}.png", full_page=True)
    return [(name, scheme, v) for v in found]


check_accessibility.__test__ = False  # type: ignore[attr-defined]
