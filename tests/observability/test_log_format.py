"""``--log-format json``: every console line of a real scheduler process is one JSON
object (what container log pipelines read); a bad format is refused."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import httpx

from ..conftest import free_port
from ..procs import cli, unmeasured_env


def test_console_logs_are_json_lines_with_log_format_json() -> None:
    port = free_port()
    proc = subprocess.Popen(
        cli("scheduler", "--port", str(port), "--log-format", "json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=unmeasured_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=30)
    lines = [x for x in (out + errs).splitlines() if x.strip()]
    records = [json.loads(x) for x in lines]  # every line parses
    events = {r["event"] for r in records}
    assert {"process.started", "process.stopped"} <= events, events
    assert all("ts" in r and "level" in r for r in records)


def test_an_unknown_log_format_is_refused() -> None:
    out = subprocess.run(cli("scheduler", "--port", "1", "--log-format", "xml"), capture_output=True,
                         text=True, timeout=60, env=unmeasured_env())  # fmt: skip
    assert out.returncode != 0 and "--log-format" in out.stderr
