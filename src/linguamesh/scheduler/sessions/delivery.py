"""Client sessions: delivery of the session's events to its socket (DESIGN §6).

The state store numbers every event (``seq``) as it enters the session's
history and releases translation results in order; the history is the one
ordered channel of a session's events, whichever instance produced them.

Each session has one pump that, in order: appends what this instance emits,
learns of events other instances appended (``notify``), and writes every
event after the last one written to the socket, filling any gap from the
history first. An event counts as delivered only when the socket write
finished. A failed or timed-out write detaches the connection at once (seed
002: never "send" into a dead socket); the session lingers, keeps collecting
events, and a client that resumes gets every event after its ``last_seq``
from the history, then live ones, in one ordered stream.

When the store cannot be reached the pump keeps what it has to append and
retries until the store is back: nothing accepted is lost while the process
lives.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec

from ...core.history import ReplayGap
from ...core.ids import JobId, SessionId, TraceId
from ...core.ordering import AlreadyDelivered
from ...core.ratelimit import TokenBucket
from ...observability.logging import get_logger
from ...protocol import ErrorCode, ProtocolError, encode
from ...state.base import DependencyDown, JobEnd, KnownOrder, Notify, SessionStateLost, StateStore
from ..jobs.jobrun import LiveAudio
from ..tasks import stop_if_cancelled

log = get_logger("linguamesh.scheduler.delivery")

WRITE_TIMEOUT = 10.0
#: Events buffered per viewer before a slow viewer is dropped (it can reconnect and replay).
VIEWER_QUEUE = 1000
#: Bytes of events waiting for a client's socket before the client is cut (close 4008).
MAX_BACKLOG = 16 * 1024 * 1024
#: Close code for a client cut for reading too slowly (an application code: 4000-4999).
SLOW_READER = 4008
RETRY_MAX = 2.0
T = TypeVar("T")


#: Heals what the store lost of a session (its holder writes the session back).
Heal = Callable[[], Awaitable[None]]


async def until_available(
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    heal: Heal | None = None,
    give_up: float | None = None,
    **log_fields: Any,
) -> T:
    """Call the store until it answers: what was accepted is never dropped for an outage.

    When the store lost the session's numbering (:class:`SessionStateLost`), ``heal``
    (the holder's) writes it back first; without one the call waits for the holder.
    With ``give_up`` (seconds) the last error is raised after that long."""
    delay = 0.05
    loop = asyncio.get_running_loop()
    end = loop.time() + give_up if give_up is not None else None
    logged = False
    while True:
        stop_if_cancelled()
        try:
            result = await fn(*args)
            if logged:
                log.info("store.available_again", **log_fields)
            return result
        except DependencyDown as exc:
            if end is not None and loop.time() >= end:
                raise
            if not logged:  # one record per outage, not one per try
                log.warning("store.unavailable_retrying", error=str(exc), **log_fields)
                logged = True
            if isinstance(exc, SessionStateLost) and heal is not None:
                try:
                    await heal()
                    continue
                except DependencyDown:
                    pass
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)


class Transport(Protocol):
    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


async def close_quietly(conn: Transport, code: int, reason: str) -> None:
    """Close a socket that may already be gone."""
    try:
        await conn.close(code, reason)
    except Exception:  # noqa: BLE001 - closing a dead socket may raise anything; it is closed either way
        pass


class _ResultHead(msgspec.Struct):
    """The fields of a translation_result needed for log records (the rest is skipped)."""

    job_id: str = ""
    utterance_index: int = -1
    tgt_lang: str = ""
    node_id: str | None = None
    trace_id: str | None = None


_head = msgspec.json.Decoder(_ResultHead)
_RESULT_PREFIX = b'{"type":"translation_result"'


@dataclass(slots=True)
class Append:
    payloads: list[bytes]


@dataclass(slots=True)
class ResultItem:
    tgt_lang: str
    index: int
    payload: bytes
    end: JobEnd | None = None
    on_end: Callable[[], None] | None = None


async def store_batch(
    store: StateStore,
    session_id: SessionId,
    item: Append | ResultItem,
    queue: asyncio.Queue[Any],
    trace_id: str | None = None,
    notify: Notify | None = None,
    heal: Heal | None = None,
    give_up: float | None = None,
    on_held: Callable[[ResultItem], None] | None = None,
) -> list[tuple[int, bytes]]:
    """Put ``item`` into the session's history — with every event queued right behind
    it and a result queued after them, in one round trip — and return the events now
    numbered. A result's job ends in the same step (``ResultItem.end``); with ``notify``,
    the session's holder is told in it too. A result that waits in the ordering buffer
    (behind an earlier, unfinished one) goes to ``on_held``."""
    payloads: list[bytes] = []
    result: ResultItem | None = None
    if isinstance(item, Append):
        payloads += item.payloads
        queued = queue._queue  # type: ignore[attr-defined]
        while queued and isinstance(queued[0], Append):
            payloads += queue.get_nowait().payloads
        if queued and isinstance(queued[0], ResultItem):
            result = queue.get_nowait()
    else:
        result = item
    retry: dict[str, Any] = {"heal": heal, "give_up": give_up, "session_id": session_id}
    if result is None:
        return await until_available(store.append_events, session_id, payloads, notify, **retry)
    try:
        if payloads:
            events = await until_available(
                store.append_and_push, session_id, payloads, result.tgt_lang, result.index, result.payload,
                result.end, notify, **retry,
            )  # fmt: skip
        else:
            events = await until_available(
                store.push_result, session_id, result.tgt_lang, result.index, result.payload, result.end,
                notify, **retry,
            )  # fmt: skip
    except AlreadyDelivered:  # a copy of a result the client has (a job that ran twice): dropped
        log.warning("result.duplicate_dropped", session_id=session_id, utterance_index=result.index)
        events = []
    except KeyError as exc:  # the ordering state was lost (Redis restarted empty)
        log.warning("result.order_lost", session_id=session_id, error=str(exc))
        events = await until_available(store.append_events, session_id, [result.payload], notify, **retry)
    else:
        # a push releases results only from the lowest expected index on, and the result
        # pushed is that index then: it waits in the buffer exactly when none was released
        if on_held is not None and not any(data.startswith(_RESULT_PREFIX) for _, data in events):
            on_held(result)
    if result.on_end is not None:
        result.on_end()
    if events:  # none when earlier results are still missing
        log.info("result.ready", trace_id=trace_id, session_id=session_id, ready_results_count=len(events))
    return events


def _size(item: object) -> int:
    if isinstance(item, Append):
        return sum(len(x) for x in item.payloads)
    if isinstance(item, ResultItem):
        return len(item.payload)
    if isinstance(item, _Fetch):
        return sum(len(d) for _, d in item.events)
    return 0


@dataclass(slots=True)
class _Fetch:
    seq: int
    events: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class _Attach:
    conn: Transport
    last_seq: int
    done: asyncio.Future[int]
    greeting: Callable[[int], bytes] | None = None


@dataclass(slots=True)
class _Marker:
    done: asyncio.Future[int]


@dataclass(slots=True)
class SessionSettings:
    src_lang: str
    tgt_langs: list[str]
    tts: bool
    partials: bool
    audio_format: str
    sample_rate: int
    preferred_node_id: str | None
    #: server-side end of speech (streamed audio): ms of trailing silence that end an
    #: utterance; None when the client ends its utterances
    end_of_speech_ms: int | None = None


@dataclass(eq=False)
class Session:
    session_id: SessionId
    trace_id: TraceId
    resume_token: str
    view_token: str
    settings: SessionSettings
    store: StateStore
    on_detached: Callable[[Session], None]
    #: a translation_result was written to the client socket (``job_id``)
    on_delivered: Callable[[str], None] = lambda job_id: None
    #: a translation_result entered the stream to the client (``job_id``), whichever
    #: instance produced it
    on_result: Callable[[Session, str], None] = lambda session, job_id: None
    conn: Transport | None = None
    #: last seq written to ``conn`` (or, with no connection, the last seq seen)
    written: int = 0
    published: int = 0
    closing: bool = False
    #: the close is under way (session_closed queued): it happens once
    finishing: bool = False
    closed: bool = False
    max_index: int = -1
    active_jobs: set[JobId] = field(default_factory=set)
    job_ids: list[JobId] = field(default_factory=list)
    # streaming (audio_chunk)
    chunk_buf: bytearray = field(default_factory=bytearray)
    chunk_seq: int = -1
    chunk_timer: asyncio.TimerHandle | None = None
    #: the utterance being spoken, streamed to its node(s) as it arrives
    live: LiveAudio | None = None
    #: server-side end of speech: audio between utterances, until speech starts
    preroll: bytearray = field(default_factory=bytearray)
    linger_timer: asyncio.TimerHandle | None = None
    #: the client address of the socket attached last (rate limits per address)
    peer: str = ""
    #: intake limits: (utterances, audio seconds) token buckets, made on first use
    buckets: tuple[TokenBucket, TokenBucket] | None = None
    #: utterances refused as rate_limited since the last log record about it
    refused: int = 0
    refused_logged_at: float = float("-inf")
    #: writes the session back into the store when the store lost it (set by the desk)
    heal: Heal | None = None
    _queue: asyncio.Queue[Append | ResultItem | _Fetch | _Attach | _Marker] = field(
        default_factory=asyncio.Queue
    )
    _pump: asyncio.Task[None] | None = None
    #: bytes of events queued for the pump (see ``_queued``), and the most allowed
    backlog: int = 0
    max_backlog: int = MAX_BACKLOG
    _cut: asyncio.Task[None] | None = None
    #: viewers (SSE): each gets every event after it is in the history
    subscribers: set[asyncio.Queue[tuple[int, bytes]]] = field(default_factory=set)
    #: per target language: results seen released and results held in the ordering
    #: buffer, written back if Redis restarts empty (``Desk.restore``)
    order: dict[str, KnownOrder] = field(default_factory=dict)

    def start(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(
            self._run(), name=f"session-pump-{self.session_id}"
        )

    # ------------------------------------------------------------------ producers

    def emit(self, msg: msgspec.Struct) -> None:
        """Queue an event (numbered by the store when it enters the history)."""
        data = encode(msg)
        self._queue.put_nowait(Append([data]))
        self._queued(len(data))

    def emit_result(
        self,
        tgt_lang: str,
        index: int,
        msg: msgspec.Struct,
        end: JobEnd | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """Queue a finished result; the store releases results in utterance order. With
        ``end``, its job ends in the same step; ``on_end`` runs after it."""
        data = encode(msg)
        self._queue.put_nowait(ResultItem(tgt_lang, index, data, end, on_end))
        self._queued(len(data))

    def deliver(self, events: list[tuple[int, bytes]], seq: int) -> None:
        """Another instance appended these events (up to ``seq``): write them in order."""
        self._queue.put_nowait(_Fetch(seq, events))
        self._queued(sum(len(d) for _, d in events))

    def hold(self, tgt_lang: str, index: int, payload: bytes) -> None:
        """A result of this session waits in the ordering buffer: keep a copy until it is
        seen released (an empty Redis restart loses the buffer; the restore puts it back)."""
        self.order.setdefault(tgt_lang, KnownOrder()).hold(index, payload)

    def _held(self, item: ResultItem) -> None:
        self.hold(item.tgt_lang, item.index, item.payload)

    def _queued(self, n: int) -> None:
        """Bytes waiting for the pump. A client that reads slower than its events come is cut
        once ``max_backlog`` bytes wait (close 4008); what it missed stays in the history and a
        resume replays it. Without the cut, its events would pile up here without bound."""
        self.backlog += n
        conn = self.conn
        if conn is not None and self.backlog > self.max_backlog:
            log.warning("session.slow_reader", session_id=self.session_id, backlog_bytes=self.backlog)
            self.detach(conn)
            self._cut = asyncio.get_running_loop().create_task(
                close_quietly(conn, SLOW_READER, "slow reader: resume to get the rest")
            )

    async def attach(self, conn: Transport, last_seq: int, greeting: Callable[[int], bytes] | None) -> int:
        """Attach a connection: write ``greeting(n)``, replay the n events after
        ``last_seq``, then go live — all in the pump, so nothing interleaves.

        Returns n. Raises ReplayGap when some of those events are no longer kept.
        """
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Attach(conn, last_seq, done, greeting))
        return await done

    def detach(self, conn: Transport) -> bool:
        if self.conn is conn:
            self.conn = None
            self.on_detached(self)
            return True
        return False

    async def drain(self) -> None:
        """Wait until everything queued before this call went through the pump (at once
        when the pump has stopped)."""
        if self._pump is None or self._pump.done():
            return
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Marker(done))
        await done

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass
        # nobody waits for a pump that is gone: markers and attaches still queued are answered
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Marker) and not item.done.done():
                item.done.set_result(0)
            elif isinstance(item, _Attach) and not item.done.done():
                item.done.set_exception(ProtocolError(ErrorCode.SESSION_NOT_FOUND, "the session was closed"))
        self.backlog = 0

    # ------------------------------------------------------------------ the pump

    async def _run(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the pump must outlive a bug in one step: a
                # dead pump would strand every later event of the session (they stay in the history)
                log.error("session.pump_failed", session_id=self.session_id, error=repr(exc))

    async def _step(self) -> None:
        """One item of the queue, in order."""
        if self._queue.empty():
            self.backlog = 0
        item = await self._queue.get()
        if isinstance(item, _Marker):
            item.done.set_result(0)
        elif isinstance(item, _Attach):
            await self._attach(item)
        elif isinstance(item, (Append, ResultItem)):
            await self._deliver(
                await store_batch(
                    self.store,
                    self.session_id,
                    item,
                    self._queue,
                    self.trace_id,
                    heal=self.heal,
                    on_held=self._held,
                )
            )
        elif item.seq > self.written or item.seq > self.published:
            await self._deliver(item.events)
        if self.backlog > self.max_backlog // 2:  # recount what still waits (rare: a backlog)
            waiting: deque[object] = self._queue._queue  # type: ignore[attr-defined]
            self.backlog = sum(map(_size, waiting))

    async def _store(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await until_available(fn, *args, session_id=self.session_id)

    async def _deliver(self, events: list[tuple[int, bytes]]) -> None:
        """Publish and write ``events`` (and any gap before them) in seq order."""
        if events:
            first = events[0][0]
            floor = min(self.written, self.published)
            if first > floor + 1:
                events = await self._fill_gap(floor, events)
        elif self.conn is not None or self.subscribers:
            try:
                events = await self._store(
                    self.store.events_since, self.session_id, min(self.written, self.published)
                )
            except ReplayGap as exc:  # older events are gone (trimmed, or Redis lost them): go on
                log.warning("history.gap", session_id=self.session_id, error=str(exc))
                events = []
        for seq, data in events:
            if seq > self.published:
                self.published = seq
                self._publish(seq, data)
            fields = self._fields(data) if data.startswith(_RESULT_PREFIX) else None
            if fields is not None and "tgt_lang" in fields:
                self.order.setdefault(fields["tgt_lang"], KnownOrder()).release(fields["utterance_index"])
            if seq <= self.written:
                continue
            if fields is not None:
                self.on_result(self, fields["job_id"])
            conn = self.conn
            if conn is None:
                self.written = seq
                if fields is not None:  # kept in the history for a resume
                    log.info("result.sending", seq=seq, live=False, **fields)
                continue
            if fields is not None:
                log.info("result.sending", seq=seq, live=True, **fields)
            if await self._write(conn, data):
                self.written = seq
                if fields is not None:
                    log.info("result.sent", seq=seq, **fields)
                    self.on_delivered(fields["job_id"])
            else:
                if fields is not None:
                    log.warning("result.send_failed", seq=seq, **fields)
                self.written = seq  # it stays in the history for the resume

    async def _fill_gap(self, floor: int, events: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        try:
            earlier = await self._store(self.store.events_since, self.session_id, floor)
        except Exception as exc:  # noqa: BLE001 - ReplayGap, or a broken store: the pump must go on with what it has
            log.warning("history.gap", session_id=self.session_id, error=str(exc))
            return events
        merged = {seq: data for seq, data in earlier}
        merged.update(events)
        return sorted(merged.items())

    def _publish(self, seq: int, data: bytes) -> None:
        for q in list(self.subscribers):
            if q.qsize() < VIEWER_QUEUE:
                q.put_nowait((seq, data))
            else:  # a viewer that does not read: drop it, it reconnects with Last-Event-ID
                self.subscribers.discard(q)
                q.put_nowait((-1, b""))

    def _fields(self, data: bytes) -> dict[str, Any]:
        try:
            head = _head.decode(data)
        except msgspec.DecodeError:
            return {"session_id": self.session_id}
        return {
            "trace_id": head.trace_id or self.trace_id,
            "session_id": self.session_id,
            "job_id": head.job_id,
            "node_id": head.node_id,
            "utterance_index": head.utterance_index,
            "tgt_lang": head.tgt_lang,
        }

    async def _attach(self, item: _Attach) -> None:
        try:
            last = int(await self._store(self.store.last_seq, self.session_id))
            if item.last_seq > last:
                # events the client says it has do not exist: taking its word would skip
                # every event up to that number when they come
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE,
                    f"field `resume.last_seq`: {item.last_seq} is ahead of the session's last event ({last})",
                )
            events = await self._store(self.store.events_since, self.session_id, item.last_seq)
        except Exception as exc:  # noqa: BLE001 - ReplayGap or anything else goes to the resuming caller; the pump lives
            item.done.set_exception(exc)
            return
        if item.greeting is not None and not await self._write(item.conn, item.greeting(len(events))):
            item.done.set_result(len(events))
            return
        item.done.set_result(len(events))
        self.conn = item.conn
        self.written = item.last_seq
        # a session taken over from another instance starts here with nothing published:
        # what its viewers saw before is theirs, this pump publishes from here on
        self.published = max(self.published, item.last_seq)
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        await self._deliver(events)

    async def _write(self, conn: Transport, data: bytes) -> bool:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await conn.send_text(data.decode())
            return True
        except Exception as exc:  # noqa: BLE001 - every transport error means the write did not finish
            log.warning("session.write_failed", session_id=self.session_id, error=repr(exc))
            if self.detach(conn):  # a socket that takes no writes is closed, not left open
                self._cut = asyncio.get_running_loop().create_task(
                    close_quietly(conn, SLOW_READER, "writes time out: resume to get the rest")
                )
            return False
