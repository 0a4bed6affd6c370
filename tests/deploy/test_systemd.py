"""The systemd units in ``deploy/systemd`` pass ``systemd-analyze verify`` without a
warning (with the path of this checkout's ``linguamesh`` put in for ``/opt/linguamesh``),
and give a drain its time."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
BINARY = Path(sys.executable).parent / "linguamesh"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_unit_verifies_cleanly(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text().replace("/opt/linguamesh/.venv/bin/linguamesh", str(BINARY))
    copy = tmp_path / unit.name
    copy.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stderr + out.stdout


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_unit_drains_and_reloads_as_the_processes_do(unit: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["KillSignal"] == "SIGTERM"  # a drain, not a kill
    assert int(service["TimeoutStopSec"]) >= 30 + 10  # the default drain timeout and a margin
    assert service["User"] != "root"
    if "scheduler" in unit.name:
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # re-reads keys and tokens


def test_there_is_a_unit_for_each_role() -> None:
    assert {u.name for u in UNITS} == {"linguamesh-scheduler.service", "linguamesh-node.service"}
