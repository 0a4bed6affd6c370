"""The one launcher for real LinguaMesh processes in tests (schedulers, nodes, the CLI).

Every duration flag a test gives is scaled by ``SCALE`` (``LINGUAMESH_TEST_TIMEOUT_SCALE``),
like every wait in the tests; each process can write its own JSON log file.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from .conftest import SCALE, free_port

#: CLI flags whose values are seconds
TIMED_FLAGS = frozenset(
    {"--pending-timeout", "--ack-timeout", "--result-timeout", "--session-linger", "--heartbeat-interval",
     "--handshake-timeout"}
)  # fmt: skip


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10 * SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cli(*args: str) -> list[str]:
    """``linguamesh ARGS`` with the durations scaled."""
    out: list[str] = []
    for i, arg in enumerate(args):
        prev = args[i - 1] if i else ""
        out.append(str(float(arg) * SCALE) if prev in TIMED_FLAGS else arg)
    return [sys.executable, "-m", "linguamesh.cli", *out]


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGKILL when the process that started it dies
    (Linux), so a test or a soak that is killed leaves no servers behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def unmeasured_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without coverage measurement (for load that only measures itself)."""
    out = {**os.environ, **(env or {})}
    for name in ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"):
        out.pop(name, None)
    return out


def launch(
    *args: str, log: Path | None = None, env: dict[str, str] | None = None, measure: bool = True
) -> Proc:
    """Start ``linguamesh ARGS`` (output discarded; with ``log``, JSON records go there;
    ``env`` adds environment variables; ``measure=False``: not under coverage)."""
    extra = ["--log-file", str(log)] if log is not None else []
    proc = subprocess.Popen(
        cli(*args, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=({**os.environ, **env} if env else None) if measure else unmeasured_env(env),
        preexec_fn=die_with_parent,
    )
    return Proc(proc, log)


async def wait_ready(port: int, p: Proc, timeout: float = 10.0) -> None:
    """Until the scheduler on ``port`` answers /readyz with 200 (fails if it exits)."""
    async with httpx.AsyncClient() as http:
        for _ in range(int(timeout * SCALE / 0.05)):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if p.proc.poll() is not None:
                raise RuntimeError(f"the scheduler exited with {p.proc.returncode}")
            await asyncio.sleep(0.05 * SCALE)
    raise TimeoutError(f"the scheduler on port {port} never became ready")


async def start_scheduler_process(
    *flags: str, port: int | None = None, log: Path | None = None
) -> tuple[int, Proc]:
    port = port or free_port()
    p = launch("scheduler", "--port", str(port), "--heartbeat-interval", "0.5", *flags, log=log)
    try:
        await wait_ready(port, p)
    except BaseException:
        p.stop()
        raise
    return port, p


@asynccontextmanager
async def scheduler_proc(tmp: Path, *flags: str) -> AsyncIterator[tuple[str, Proc]]:
    """A scheduler process logging at debug to ``tmp/scheduler.log``."""
    port, p = await start_scheduler_process("--log", "debug", *flags, log=tmp / "scheduler.log")
    try:
        yield f"ws://127.0.0.1:{port}", p
    finally:
        p.stop()


def node_config(
    tmp: Path,
    node_id: str,
    delay_ms: int = 20,
    slots: int = 4,
    metrics_port: int = 0,
    engine: str = "",
    drain_timeout: float = 30.0,
) -> Path:
    """A node config with the test engines (``engine``: more lines for their table)."""
    cfg = tmp / f"{node_id}.toml"
    cfg.write_text(
        f'node_id = "{node_id}"\nmax_concurrent_jobs = {slots}\nmetrics_port = {metrics_port}\n'
        f"drain_timeout = {drain_timeout}\n"
        f'[[engines]]\nkind = "test"\nlanguages = ["en", "es"]\ndelay_ms = {delay_ms}\n{engine}'
    )
    return cfg


def node_process(url: str, node_id: str, tmp: Path, *flags: str, delay_ms: int = 20, slots: int = 4,
                 log_level: str = "warning", log: Path | None = None, metrics_port: int = 0) -> Proc:  # fmt: skip
    # a test's end stops the node: it need not wait long for results nobody will ack
    cfg = node_config(tmp, node_id, delay_ms, slots, metrics_port, drain_timeout=1.0)
    return launch("node", "--scheduler", url, "--config", str(cfg), "--log", log_level, *flags, log=log)


@asynccontextmanager
async def node_proc(
    tmp: Path,
    url: str,
    node_id: str = "node-p",
    delay_ms: int = 20,
    metrics_port: int = 0,
    flags: tuple[str, ...] = (),
) -> AsyncIterator[Proc]:
    """A node process (test engines) logging at debug to ``tmp/<node_id>.log``."""
    p = node_process(url, node_id, tmp, *flags, delay_ms=delay_ms, log_level="debug", log=tmp / f"{node_id}.log",
                     metrics_port=metrics_port)  # fmt: skip
    try:
        yield p
    finally:
        p.stop()


async def wait_node(http_base: str, node_id: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(int(300 * SCALE)):
            nodes = (await http.get(f"{http_base}/api/v1/nodes")).json()["nodes"]
            if any(n["node_id"] == node_id for n in nodes):
                return
            await asyncio.sleep(0.05 * SCALE)
    raise TimeoutError(f"node {node_id} did not register")


async def wait_log(path: Path | list[Path], needle: str, timeout: float = 10.0) -> None:
    """Until ``needle`` is in the log file ``path`` (a list: in any of them)."""
    paths = path if isinstance(path, list) else [path]
    for _ in range(int(timeout * SCALE / 0.05)):
        if any(p.exists() and needle in p.read_text() for p in paths):
            return
        await asyncio.sleep(0.05 * SCALE)
    raise TimeoutError(f"{needle!r} never appeared in {', '.join(map(str, paths))}")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``linguamesh ARGS`` to its end; its output as text."""
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout * SCALE)


def run_trace(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("trace", *args)
