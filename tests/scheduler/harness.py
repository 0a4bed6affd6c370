"""In-process scheduler parts: the real service with the memory store, and fake sockets
that record every frame (no uvicorn, no network)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from linguamesh import protocol as p
from linguamesh.scheduler.config import SchedulerConfig
from linguamesh.scheduler.nodes.registry import NodeConn
from linguamesh.scheduler.service import Scheduler
from linguamesh.scheduler.sessions.session import Session
from linguamesh.state.memory import MemoryStateStore

from ..conftest import SCALE, pcm


class FakeSocket:
    """A transport that records the frames written to it, decoded."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str | None] | None = None
        self._changed = asyncio.Event()

    async def send_text(self, data: str) -> None:
        if self.closed is not None:
            raise RuntimeError("socket is closed")
        self.frames.append(json.loads(data))
        self._changed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def wait(self, kind: str, count: int = 1, timeout: float = 2.0) -> list[dict[str, Any]]:
        """The first ``count`` frames of ``kind``, waiting for them if need be."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout * SCALE
        while len(self.of(kind)) < count:
            self._changed.clear()
            left = end - loop.time()
            if left <= 0:
                seen = [f["type"] for f in self.frames]
                raise AssertionError(f"waited for {count} {kind} frame(s); got {seen}")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass
        return self.of(kind)[:count]


CAPS = p.Capabilities(asr_languages=["en"], nmt_pairs=[("en", "es")], tts_languages=["es"])


async def started(**cfg: Any) -> Scheduler:
    sched = Scheduler(SchedulerConfig(**cfg), MemoryStateStore())
    await sched.start()
    return sched


async def node(sched: Scheduler, node_id: str, slots: int = 1) -> tuple[NodeConn, FakeSocket]:
    sock = FakeSocket()
    msg = p.NodeRegister(
        protocol_version=1, node_id=node_id, version="test", capabilities=CAPS, max_concurrent_jobs=slots
    )
    nc = await sched.register_node(msg, sock)
    return nc, sock


async def session(sched: Scheduler) -> tuple[Session, FakeSocket]:
    sock = FakeSocket()
    init = p.SessionInit(protocol_version=1, src_lang="en", tgt_lang="es")
    s = await sched.open_session(init, sock)
    return s, sock


async def say(sched: Scheduler, s: Session, index: int) -> None:
    await sched.utterance(s, p.Utterance(utterance_index=index, audio=pcm(0.2)))


def ok_result(assign: dict[str, Any], text: str = "hola") -> p.JobResult:
    return p.JobResult(
        job_id=assign["job_id"],
        attempt_id=assign["attempt_id"],
        success=True,
        text_asr="hello",
        text_translated=text,
    )
