"""Shared fixtures: real schedulers and nodes on loopback, audio helpers."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from linguamesh.audio import to_pcm16
from linguamesh.engines.registry import build
from linguamesh.node.agent import NodeAgent
from linguamesh.node.config import NodeConfig
from linguamesh.runtime import make_server
from linguamesh.scheduler.config import SchedulerConfig
from linguamesh.scheduler.service import Scheduler

#: One unit of waiting, scaled for slow CI machines (LINGUAMESH_TEST_TIMEOUT_SCALE=3): every wait
#: of a test and every timeout a test gives a scheduler or a node is multiplied by it.
SCALE = float(os.environ.get("LINGUAMESH_TEST_TIMEOUT_SCALE", "1"))

#: The scheduler settings that are durations: start_scheduler scales each one a test sets.
TIMED = (
    "pending_timeout", "ack_timeout", "result_timeout", "session_linger", "heartbeat_interval",
    "chunk_idle_gap", "handshake_timeout",
)  # fmt: skip


def scaled(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: (v * SCALE if k in TIMED and v is not None else v) for k, v in cfg.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transcript_lines(text: str) -> list[str]:
    """The utterances of a plain-text transcript: after its header, without their times."""
    _, _, body = text.partition("\n\n")
    return [line.split("] ", 1)[1] for line in body.splitlines()]


def pcm(seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return to_pcm16(0.1 * np.sin(2 * np.pi * 220 * t))


@dataclass
class SchedulerHandle:
    config: SchedulerConfig
    server: Any
    task: asyncio.Task[Any]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.config.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    @property
    def sched(self) -> Scheduler:
        return self.server.app.state.scheduler  # type: ignore[no-any-return]

    async def stop(self) -> None:
        # uvicorn waits up to 5 s for open sockets, then the scheduler's own bounded stop steps
        # (relays 2 s, inbox sends 2 s, Redis calls): 20 s is past any of them adding up.
        # Rarely, under the full suite's load, an in-process stop has taken longer (not seen in
        # isolation): then every task's stack is printed, for the next look, and the server
        # task is cancelled. A stop that does not end even then fails the test.
        self.server.should_exit = True
        done, _ = await asyncio.wait({self.task}, timeout=20 * SCALE)
        if done:
            self.task.result()
            return
        import sys

        print(
            f"scheduler on port {self.config.port}: stop took over {20 * SCALE:g}s; tasks:", file=sys.stderr
        )
        for t in asyncio.all_tasks():
            if not t.done():
                t.print_stack(limit=6, file=sys.stderr)
        self.task.cancel()
        done, _ = await asyncio.wait({self.task}, timeout=5 * SCALE)
        assert done, "the scheduler did not stop even when cancelled"


@dataclass
class NodeHandle:
    agent: NodeAgent
    task: asyncio.Task[Any]

    async def stop(self) -> None:
        await self.agent.stop()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.agent.engines.close()


async def start_scheduler(port: int | None = None, store: Any = None, **cfg: Any) -> SchedulerHandle:
    """A scheduler on loopback in this process; the durations a test sets are scaled."""
    cfg.setdefault("heartbeat_interval", 0.5)
    config = SchedulerConfig(port=port or free_port(), **scaled(cfg))
    server = make_server(config, store)
    server.config.setup_event_loop = lambda: None
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    for _ in range(int(500 * SCALE)):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    else:
        raise TimeoutError("scheduler did not start")
    return SchedulerHandle(config, server, task)


def test_engines(**kw: Any) -> list[dict[str, Any]]:
    return [{"kind": "test", "languages": ["en", "es", "fr"], **kw}]


test_engines.__test__ = False  # type: ignore[attr-defined]


async def start_node(
    url: str | list[str],
    node_id: str = "node-a",
    *,
    max_concurrent_jobs: int = 4,
    engines: list[dict[str, Any]] | None = None,
    wait: bool = True,
    streaming: bool = True,
) -> NodeHandle:
    cfg = NodeConfig(
        streaming=streaming,
        scheduler_urls=[url] if isinstance(url, str) else url,
        node_id=node_id,
        max_concurrent_jobs=max_concurrent_jobs,
        engines=engines if engines is not None else test_engines(),
        backoff_initial=0.05 * SCALE,
        backoff_max=0.5 * SCALE,
    )
    agent = NodeAgent(cfg, build(cfg.engines))
    task = asyncio.create_task(agent.run())
    if wait:
        await asyncio.wait_for(agent.connected.wait(), 10 * SCALE)
    return NodeHandle(agent, task)


@dataclass
class Cluster:
    schedulers: list[SchedulerHandle] = field(default_factory=list)
    nodes: list[NodeHandle] = field(default_factory=list)

    async def scheduler(self, **cfg: Any) -> SchedulerHandle:
        h = await start_scheduler(**cfg)
        self.schedulers.append(h)
        return h

    async def node(self, url: str | list[str], node_id: str = "node-a", **kw: Any) -> NodeHandle:
        h = await start_node(url, node_id, **kw)
        self.nodes.append(h)
        return h


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    for n in c.nodes:
        await n.stop()
    for s in c.schedulers:
        if not s.task.done():
            await s.stop()


async def late_events(client: Any, wait: float = 0.3, quiet: float = 0.2) -> list[Any]:
    """Every event that still arrives after ``wait`` s, until ``quiet`` s pass without one
    (anything duplicated or late would show up here)."""
    await asyncio.sleep(wait)
    out = []
    try:
        while True:
            out.append(await client.recv(quiet))
    except TimeoutError:
        return out


async def receive_until(
    client: Any, done: Callable[[list[Any]], bool], timeout: float = 10.0, what: str = "the events"
) -> list[Any]:
    """The one "receive until" of the tests: the session's events, in order, until
    ``done(events)`` holds; fails after ``timeout`` (scaled) s naming what arrived."""
    events: list[Any] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout * SCALE
    while not done(events):
        left = end - loop.time()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; got {[type(e).__name__ for e in events]}")
        try:
            events.append(await client.recv(left))
        except TimeoutError:
            continue
    return events


def until_result(n: int = 1) -> Callable[[list[Any]], bool]:
    """``done`` for :func:`receive_until`: ``n`` translation results have arrived."""
    return lambda events: sum(type(e).__name__ == "TranslationResult" for e in events) >= n


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def eventually(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout * SCALE
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from .redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    redis_server.flush()
    return str(redis_server.url)


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A socket or file a test leaves open is reported (ResourceWarning, an error here) in
    that test, not in whichever test the garbage collector happens to run in later."""
    yield
    gc.collect()
