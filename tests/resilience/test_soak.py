"""The short fault-injection soak (issue 18): ``bench/soak.py`` for about a minute, with
every kind of fault once. Nothing may be lost or duplicated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import SCALE
from ..procs import unmeasured_env

ROOT = Path(__file__).resolve().parents[2]
KINDS = {
    "node-kill",
    "redis-stall",
    "client-drop",
    "instance-kill",
    "node-drain",
    "redis-restart",
    "instance-drain",
}


@pytest.mark.soak
@pytest.mark.timeout(360)
def test_short_soak_loses_and_duplicates_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--json", "--duration", "50", "--fault-every", "6.6",
         "--sessions", "8", "--nodes", "3", "--settle", str(60 * SCALE)],
        capture_output=True, text=True, timeout=300 * SCALE, env=unmeasured_env(),
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in r.items() if k != "faults"}, indent=1))
    assert {f["fault"] for f in r["faults"] if f["ok"]} == KINDS, r["faults"]
    assert r["lost"] == 0, r["lost_utterances"]
    assert r["duplicated"] == 0, r["duplicates"]
    assert r["unattributed_errors"] == []
    assert r["ok"] >= r["sent"] * 0.8, r  # failures are coded, and few
    assert proc.returncode == 0
