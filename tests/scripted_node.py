"""A node that speaks raw protocol v1 and does only what a test tells it (never run by users)."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from linguamesh import protocol as p

from .conftest import SCALE


class ScriptedNode:
    def __init__(
        self,
        url: str,
        node_id: str,
        langs: tuple[str, ...] = ("en", "es", "fr"),
        slots: int = 4,
        token: str | None = None,
        streaming: bool = False,
    ):
        self.url = url + "/ws/node"
        self.node_id = node_id
        self.token = token
        self.langs = langs
        self.slots = slots
        self.streaming = streaming
        self.ws: ClientConnection | None = None
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.received: list[Any] = []
        self._reader: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None

    async def connect(self) -> p.NodeRegisterAck:
        first = await self.register()
        assert isinstance(first, p.NodeRegisterAck), first
        return first

    async def register(self) -> p.NodeRegisterAck | p.Error:
        """Open the socket and register; the scheduler's first answer (an ack, or an error)."""
        self.ws = await connect(self.url)
        caps = p.Capabilities(
            asr_languages=list(self.langs),
            nmt_pairs=[(a, b) for a in self.langs for b in self.langs if a != b],
            tts_languages=list(self.langs),
            repair_languages=list(self.langs),
            streaming=self.streaming,
        )
        await self.send(
            p.NodeRegister(
                protocol_version=1,
                node_id=self.node_id,
                version="scripted",
                capabilities=caps,
                max_concurrent_jobs=self.slots,
                token=self.token,
            )
        )
        ack = p.decode_to_node(await self.ws.recv())
        if isinstance(ack, p.Error):
            return ack
        assert isinstance(ack, p.NodeRegisterAck), ack
        self._reader = asyncio.create_task(self._read())
        self._beat = asyncio.create_task(self._heartbeat(ack.heartbeat_interval_s))
        return ack

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.send(p.NodeHeartbeat(running_jobs=0))

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            msg = p.decode_to_node(frame)
            self.received.append(msg)
            await self.inbox.put(msg)

    async def send(self, msg: Any) -> None:
        assert self.ws is not None
        await self.ws.send(p.encode_str(msg))

    async def expect(self, kind: type, timeout: float = 5.0) -> Any:
        """The next message of ``kind`` (others are skipped); ``timeout`` is scaled."""
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), timeout * SCALE)
            if isinstance(msg, kind):
                return msg

    def result_for(self, job: p.JobAssign, text: str = "scripted") -> p.JobResult:
        return p.JobResult(
            job_id=job.job_id,
            attempt_id=job.attempt_id,
            success=True,
            text_asr=text,
            text_translated=f"[{job.tgt_lang}] {text}",
            timings=p.Timings(asr_ms=1, nmt_ms=1, total_ms=2),
        )

    async def closed(self, timeout: float = 5.0) -> None:
        """Wait until the scheduler closes this node's socket (``timeout`` is scaled)."""
        assert self._reader is not None
        await asyncio.wait([self._reader], timeout=timeout * SCALE)
        assert self._reader.done(), "the socket is still open"

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        for task in (self._reader, self._beat):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------------- the other side: a scheduler


async def accept_node(ws: Any) -> p.NodeRegister:
    """For a scheduler a test plays itself: read the node's registration and ack it."""
    reg = p.decode_node(await ws.recv())
    assert isinstance(reg, p.NodeRegister), reg
    limits = p.Limits(max_message_bytes=1 << 20, max_utterance_seconds=30)
    ack = p.NodeRegisterAck(node_id=reg.node_id, heartbeat_interval_s=5, pools=[], limits=limits)
    await ws.send(p.encode_str(ack))
    return reg


def assign(job_id: str, index: int = 0, audio: bytes = b"\0\0" * 1600) -> p.JobAssign:
    """A job_assign of an en->es job (asr, nmt) as a scheduler would send it."""
    return p.JobAssign(
        job_id=job_id, attempt_id=1, trace_id="t", session_id="s", utterance_index=index, src_lang="en",
        tgt_lang="es", audio=audio, audio_format="pcm16", sample_rate=16000, stages=["asr", "nmt"],
        deadline_ms=10000,
    )  # fmt: skip
