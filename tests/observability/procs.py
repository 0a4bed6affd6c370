"""Scheduler and node as real processes, each writing its own JSON log file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..conftest import SCALE, free_port


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "linguamesh.cli", *args]


@asynccontextmanager
async def scheduler_proc(tmp: Path, *flags: str) -> AsyncIterator[tuple[str, Proc]]:
    port = free_port()
    log = tmp / "scheduler.log"
    proc = subprocess.Popen(
        _cli(
            "scheduler",
            "--port",
            str(port),
            "--log",
            "debug",
            "--log-file",
            str(log),
            "--heartbeat-interval",
            "0.5",
            *flags,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    p = Proc(proc, log)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(int(200 * SCALE)):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError("scheduler exited")
                await asyncio.sleep(0.05)
        yield f"ws://127.0.0.1:{port}", p
    finally:
        p.stop()


@asynccontextmanager
async def node_proc(
    tmp: Path, url: str, node_id: str = "node-p", delay_ms: int = 20, metrics_port: int = 0
) -> AsyncIterator[Proc]:
    cfg = tmp / f"{node_id}.toml"
    cfg.write_text(
        f'node_id = "{node_id}"\nmax_concurrent_jobs = 4\nmetrics_port = {metrics_port}\n'
        f'[[engines]]\nkind = "test"\nlanguages = ["en", "es"]\ndelay_ms = {delay_ms}\n'
    )
    log = tmp / f"{node_id}.log"
    proc = subprocess.Popen(
        _cli("node", "--scheduler", url, "--config", str(cfg), "--log", "debug", "--log-file", str(log)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    p = Proc(proc, log)
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
            await asyncio.sleep(0.05)
    raise TimeoutError(f"node {node_id} did not register")


async def wait_log(path: Path, needle: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout * SCALE / 0.05)):
        if path.exists() and needle in path.read_text():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{needle!r} never appeared in {path}")


def run_trace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli("trace", *args), capture_output=True, text=True, timeout=60)
