"""Client sessions: event numbering, history, and delivery to the socket (DESIGN §6).

Every event gets the session's next ``seq`` and goes through one per-session
pump, in order: first into the history (the store), then — if a connection
is attached — to the socket. An event counts as delivered only when the
socket write finished. A failed or timed-out write detaches the connection at
once (seed 002: never "send" into a dead socket); the session lingers and
keeps collecting events, and a client that resumes gets every event after
its ``last_seq`` from the history, then live ones, in one ordered stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from ..core.ids import JobId, SessionId, TraceId
from ..core.ordering import OrderedStream
from ..observability.logging import get_logger
from ..protocol import TranslationResult, encode
from ..state.base import StateStore

log = get_logger("linguamesh.scheduler.delivery")

WRITE_TIMEOUT = 10.0
#: Events buffered per viewer before a slow viewer is dropped (it can reconnect and replay).
VIEWER_QUEUE = 1000


class Transport(Protocol):
    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(slots=True)
class _Attach:
    conn: Transport
    last_seq: int
    done: asyncio.Future[int]
    greeting: Callable[[int], bytes] | None = None


@dataclass(slots=True)
class _Event:
    seq: int
    data: bytes
    fields: dict[str, Any] | None  # log fields for results, None for other events


@dataclass(slots=True)
class SessionSettings:
    src_lang: str
    tgt_langs: list[str]
    tts: bool
    partials: bool
    audio_format: str
    sample_rate: int
    preferred_node_id: str | None


@dataclass(eq=False)
class Session:
    session_id: SessionId
    trace_id: TraceId
    resume_token: str
    view_token: str
    settings: SessionSettings
    store: StateStore
    on_detached: Callable[[Session], None]
    on_delivered: Callable[[], None] = lambda: None
    seq: int = 0
    conn: Transport | None = None
    closing: bool = False
    closed: bool = False
    streams: dict[str, OrderedStream[TranslationResult]] = field(default_factory=dict)
    max_index: int = -1
    seen_indices: set[int] = field(default_factory=set)
    active_jobs: set[JobId] = field(default_factory=set)
    job_ids: list[JobId] = field(default_factory=list)
    # streaming (audio_chunk)
    chunk_buf: bytearray = field(default_factory=bytearray)
    chunk_seq: int = -1
    chunk_timer: asyncio.TimerHandle | None = None
    linger_timer: asyncio.TimerHandle | None = None
    _outbox: asyncio.Queue[_Event | _Attach] = field(default_factory=asyncio.Queue)
    #: viewers (SSE): each gets every event after it is in the history
    subscribers: set[asyncio.Queue[tuple[int, bytes]]] = field(default_factory=set)
    _pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(
            self._run(), name=f"session-pump-{self.session_id}"
        )

    def emit(self, msg: msgspec.Struct, fields: dict[str, Any] | None = None) -> int:
        """Number ``msg`` with the next seq and queue it for history and delivery."""
        self.seq += 1
        msg.seq = self.seq  # type: ignore[attr-defined]
        self._outbox.put_nowait(_Event(self.seq, encode(msg), fields))
        return self.seq

    async def attach(self, conn: Transport, last_seq: int, greeting: Callable[[int], bytes]) -> int:
        """Attach a connection: write ``greeting(n)``, replay the n events after
        ``last_seq``, then go live — all in the pump, so nothing interleaves.

        Returns n. Raises ReplayGap when some of those events are no longer kept.
        """
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._outbox.put_nowait(_Attach(conn, last_seq, done, greeting))
        return await done

    def detach(self, conn: Transport) -> bool:
        if self.conn is conn:
            self.conn = None
            self.on_detached(self)
            return True
        return False

    async def drain(self) -> None:
        """Wait until every queued event went through the pump."""
        marker: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._outbox.put_nowait(_Attach(_NoTransport(), -1, marker))
        await marker

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, _Attach):
                await self._replay(item)
                continue
            try:
                await self.store.append_event(self.session_id, item.seq, item.data)
            except Exception as exc:  # the event is still delivered live if possible
                log.error("history.append_failed", session_id=self.session_id, error=str(exc))
            for q in list(self.subscribers):
                if q.qsize() < VIEWER_QUEUE:
                    q.put_nowait((item.seq, item.data))
                else:  # a viewer that does not read: drop it, it reconnects with Last-Event-ID
                    self.subscribers.discard(q)
                    q.put_nowait((-1, b""))
            conn = self.conn
            if item.fields is not None:
                log.info("result.sending", seq=item.seq, live=conn is not None, **item.fields)
            if conn is None:
                continue
            if await self._write(conn, item.data) and item.fields is not None:
                log.info("result.sent", seq=item.seq, **item.fields)
                self.on_delivered()
            elif item.fields is not None:
                log.warning("result.send_failed", seq=item.seq, **item.fields)

    async def _replay(self, item: _Attach) -> None:
        if item.last_seq < 0:  # drain marker
            item.done.set_result(0)
            return
        try:
            events = await self.store.events_since(self.session_id, item.last_seq)
        except Exception as exc:
            item.done.set_exception(exc)
            return
        if item.greeting is not None and not await self._write(item.conn, item.greeting(len(events))):
            item.done.set_result(len(events))
            return
        item.done.set_result(len(events))
        for _, data in events:
            if not await self._write(item.conn, data):
                return
        self.conn = item.conn
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None

    async def _write(self, conn: Transport, data: bytes) -> bool:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await conn.send_text(data.decode())
            return True
        except Exception as exc:
            log.warning("session.write_failed", session_id=self.session_id, error=repr(exc))
            self.detach(conn)
            return False


class _NoTransport:
    async def send_text(self, data: str) -> None:
        pass

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass
