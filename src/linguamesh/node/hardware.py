"""What a node runs on, for ``node_register.hardware`` (shown in ``/api/v1/nodes`` and
``/admin``): CPU model and count, memory, and the GPUs ``nvidia-smi`` lists, if any.
Flat keys (the protocol's ``hardware`` is a map of scalars)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def gpus(timeout: float = 3.0) -> list[tuple[str, int]]:
    """(name, memory in MB) of each GPU ``nvidia-smi`` reports; none without it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip():
            found.append((name.strip(), int(memory.strip()) if memory.strip().isdigit() else 0))
    return found


def describe() -> dict[str, str | int | float]:
    """This machine, as a node reports it."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    out: dict[str, str | int | float] = {"cpu_model": _cpu_model(), "cpus": cpus, "memory_mb": _memory_mb()}
    found = gpus()
    out["gpus"] = len(found)
    for i, (name, memory) in enumerate(found):
        out[f"gpu{i}_name"] = name
        out[f"gpu{i}_memory_mb"] = memory
    return out
