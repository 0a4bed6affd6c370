"""GPU memory as the device reports it: what a model really takes once loaded there.

The model manager keeps a budget per GPU (``[models] gpu_memory_limit_mb``). Disk bytes
say little about it (float16 weights of an int8 file, cuDNN workspaces, CTranslate2's
caching allocator), so the cost of a model on a GPU is measured: the device's used
memory before and after the load, read from NVIDIA's management library through
``nvidia-smi`` (loads on one device are serialised, so the difference is the model's;
another process using the GPU at that moment would blur it, which one node per GPU
avoids). Without a reading (no ``nvidia-smi``, a device it does not list) the file size
stands in and that is logged.
"""

from __future__ import annotations

import shutil
import subprocess


def parse_device(device: str) -> int | None:
    """The GPU index of ``cuda`` or ``cuda:N``; None for anything else (the CPU)."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None


def used_bytes(index: int, timeout: float = 5.0) -> int | None:
    """Memory in use on GPU ``index`` (all processes), or None when it cannot be read."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, f"--id={index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_mib(out)


def parse_mib(text: str) -> int | None:
    """Bytes of ``nvidia-smi``'s ``memory.used`` in MiB (``"1234"``); None if not a number."""
    first = text.splitlines()[0].strip() if text.strip() else ""
    return int(first) * 2**20 if first.isdigit() else None
