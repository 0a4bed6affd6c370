"""axe-core (from npm, run inside the page) finds no serious or critical accessibility
violation on the three pages, in light and dark mode; screenshots at 1280 and 390 px."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..conftest import Cluster, test_engines
from .conftest import AXE, RECORDER, check_accessibility
from .test_pages import _start_session, _tone_wav


async def test_no_serious_accessibility_violations_in_light_and_dark(
    cluster: Cluster, browser: Any, tmp_path: Path
) -> None:
    if not AXE.exists():
        pytest.fail("axe-core is not installed: run scripts/setup.sh test (npm install axe-core)")
    s = await cluster.scheduler()
    await cluster.node(s.url, "node-a11y", engines=test_engines(text="line {seconds}"))
    problems: list[Any] = []
    for scheme in ("light", "dark"):
        ctx = await browser.new_context(
            permissions=["microphone"],
            base_url=s.http,
            color_scheme=scheme,
            viewport={"width": 1280, "height": 900},
        )
        await ctx.add_init_script(RECORDER)
        page = await ctx.new_page()
        await page.goto("/")
        await page.wait_for_function("document.querySelectorAll('#src option').length > 0")
        problems += await check_accessibility(page, "speaker-start", scheme)
        await page.set_viewport_size({"width": 1280, "height": 900})
        await _start_session(page)
        for i in range(2):
            await page.set_input_files("#file", str(_tone_wav(tmp_path, f"a{scheme}{i}.wav", 0.3 + 0.1 * i)))
            await page.wait_for_function(f"window.seen.results.length === {i + 1}")
        problems += await check_accessibility(page, "speaker", scheme)
        link = await page.get_attribute("#share-link", "href")
        viewer = await ctx.new_page()
        await viewer.goto(link or "")
        await viewer.wait_for_function("document.querySelectorAll('#subtitles p').length === 2")
        problems += await check_accessibility(viewer, "viewer", scheme)
        admin = await ctx.new_page()
        await admin.goto("/admin")
        await admin.wait_for_timeout(1500)  # its first refresh
        problems += await check_accessibility(admin, "admin", scheme)
        await ctx.close()
    assert not problems, problems
