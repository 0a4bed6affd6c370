"""What a node reports of its machine: this machine's CPU and memory, and the GPUs
``nvidia-smi`` lists (a stand-in on PATH here: no GPU on the test machines)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linguamesh.node.hardware import describe, gpus


def test_this_machine_is_described() -> None:
    d = describe()
    assert isinstance(d["cpu_model"], str) and d["cpu_model"]
    assert isinstance(d["cpus"], int) and d["cpus"] >= 1
    assert isinstance(d["memory_mb"], int) and d["memory_mb"] > 0
    assert all(isinstance(v, str | int | float) for v in d.values())  # the protocol's scalars


def test_gpus_come_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf 'NVIDIA L4, 23034\\nNVIDIA A100-SXM4-80GB, 81920\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpus() == [("NVIDIA L4", 23034), ("NVIDIA A100-SXM4-80GB", 81920)]
    d = describe()
    assert d["gpus"] == 2 and d["gpu1_name"] == "NVIDIA A100-SXM4-80GB" and d["gpu0_memory_mb"] == 23034
    smi.write_text("#!/bin/sh\nexit 9\n")  # a driver that fails: no GPU reported, no error
    assert gpus() == []
