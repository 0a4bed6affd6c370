"""The JavaScript SDK (``src/linguamesh/web/sdk``, packaged in ``clients/js``) under node's
test runner against a real scheduler and node process (test engines), and the minimal
JavaScript client of the guide (``examples/minimal_client.js``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..procs import node_proc, scheduler_proc, wait_node

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients" / "js"
NODE = shutil.which("node")


def node_js() -> str:
    if NODE is None or not (JS / "node_modules" / "ws").exists():
        pytest.fail("node and the SDK's dev dependencies are needed: run scripts/setup.sh test")
    return NODE


@pytest.mark.timeout(180)
async def test_the_sdk_passes_its_tests_against_a_real_scheduler(tmp_path: Path) -> None:
    node = node_js()
    async with scheduler_proc(tmp_path) as (url, _sched), node_proc(tmp_path, url, "js-node"):
        await wait_node(url.replace("ws", "http"), "js-node")
        out = subprocess.run(
            [node, "--test", "--test-reporter=spec", *sorted(str(f) for f in (JS / "test").glob("*.test.js"))],
            cwd=JS, capture_output=True, text=True, timeout=150, env={**os.environ, "LINGUAMESH_URL": url},
        )  # fmt: skip
    print(out.stdout[-6000:])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    summary = dict(line[2:].split(" ", 1) for line in out.stdout.splitlines() if line.startswith("ℹ "))
    assert summary.get("fail") == "0" and summary.get("skipped") == "0", summary
    assert int(summary["pass"]) >= 13, summary  # the unit tests and the ones against the scheduler


@pytest.mark.timeout(120)
async def test_the_minimal_javascript_client_translates(tmp_path: Path) -> None:
    node = node_js()
    # as a user's project: the client beside a node_modules with `ws` (node 20 has no WebSocket)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "examples" / "minimal_client.js", project / "client.mjs")
    (project / "node_modules").symlink_to(JS / "node_modules")
    async with scheduler_proc(tmp_path) as (url, _sched), node_proc(tmp_path, url, "js-min-node"):
        await wait_node(url.replace("ws", "http"), "js-min-node")
        out = subprocess.run(
            [node, str(project / "client.mjs"), url], cwd=project, capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("session s-"), out.stdout
    assert any(x.startswith("result 0 ok") for x in lines), out.stdout
