"""The short fault-injection soak: ``bench/soak.py`` for about a minute, with
every kind of fault once. Nothing may be lost or duplicated."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def diagnose(r: dict[str, Any], cases: list[dict[str, Any]]) -> list[str]:
    """``linguamesh trace`` over the run's logs for each of ``cases`` (session, utterance)."""
    logs = sorted(glob.glob(str(Path(str(r.get("logs", ""))) / "*.log")))
    out = []
    for case in cases:
        sid, (_, index) = case.get("session_id"), case["utterance"]
        if not sid or not logs:
            continue
        t = subprocess.run(
            [str(Path(sys.executable).parent / "linguamesh"), "trace", "--session", sid, "--utterance", str(index),
             *logs],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        out.append(f"--- trace of {case['session']} utterance {index}:\n{t.stdout[-6000:]}{t.stderr[-1000:]}")
    return out


@pytest.mark.soak
@pytest.mark.timeout(360)
def test_short_soak_loses_and_duplicates_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--json", "--duration", "50", "--fault-every", "6.6",
         "--sessions", "8", "--nodes", "3", "--settle", str(60 * SCALE), "--keep-on-failure"],
        capture_output=True, text=True, timeout=300 * SCALE, env=unmeasured_env(),
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in r.items() if k not in ("faults", "lost_utterances")}, indent=1))
    print("faults:", ", ".join(f"{f['fault']} at {f['at_s']} s" for f in r["faults"]))
    try:
        assert {f["fault"] for f in r["faults"] if f["ok"]} == KINDS, r["faults"]
        if r["lost"] or r["duplicated"]:  # what the trace tool says of the first ones (shown on failure)
            print("\n".join(diagnose(r, [*r["lost_utterances"][:2], *r["duplicates"][:2]])))
        assert r["lost"] == 0, r["lost_utterances"]
        assert r["duplicated"] == 0, r["duplicates"]
    finally:
        if r.get("logs"):
            shutil.rmtree(str(r["logs"]), ignore_errors=True)
    assert r["unattributed_errors"] == []
    assert r["ok"] >= r["sent"] * 0.8, r  # failures are coded, and few
    assert proc.returncode == 0


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_short_soak_on_sentinel_loses_and_duplicates_nothing() -> None:
    """The same on a Redis master with a replica and three Sentinels: the master is killed
    (and comes back as a replica) besides the process faults."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--json", "--sentinel", "--duration", "40",
         "--fault-every", "9", "--faults", "master-kill,node-kill,instance-kill,master-kill",
         "--sessions", "6", "--nodes", "3", "--settle", str(60 * SCALE), "--keep-on-failure"],
        capture_output=True, text=True, timeout=240 * SCALE, env=unmeasured_env(),
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in r.items() if k not in ("faults", "lost_utterances")}, indent=1))
    try:
        assert sum(f["ok"] for f in r["faults"] if f["fault"] == "master-kill") >= 1, r["faults"]
        if r["lost"] or r["duplicated"]:
            print("\n".join(diagnose(r, [*r["lost_utterances"][:2], *r["duplicates"][:2]])))
        assert (r["lost"], r["duplicated"]) == (0, 0), (r["lost_utterances"], r["duplicates"])
    finally:
        if r.get("logs"):
            shutil.rmtree(str(r["logs"]), ignore_errors=True)
    assert r["unattributed_errors"] == []
    assert proc.returncode == 0
