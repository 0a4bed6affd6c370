"""A session's delivery: its events into its history and onto its socket.

The state store numbers every event (``seq``) as it enters the session's
history and releases translation results in order; the history is the one
ordered channel of a session's events, whichever instance produced them.

Each session has one pump that, in order: appends what this instance emits,
learns of events other instances appended (``notify``), and writes every
event after the last one written to the socket, filling any gap from the
history first. An event counts as delivered only when the socket write
finished. A failed or timed-out write detaches the connection at once (never
"send" into a dead socket); the session lingers, keeps collecting events, and a
client that resumes gets every event after its ``last_seq`` from the history,
then live ones, in one ordered stream.

When the store cannot be reached the pump keeps what it has to append and
retries until the store is back: nothing accepted is lost while the process
lives.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from ...core.history import ReplayGap
from ...core.ids import SessionId
from ...core.ordering import AlreadyDelivered, NotExpected
from ...observability.logging import get_logger
from ...protocol import ErrorCode, ProtocolError, encode, event_lang
from ...state.base import JobEnd, KnownOrder, Notify, StateStore
from ..retry import Heal, until_available
from ..tasks import Tasks, stop_if_cancelled
from ..transport import Transport, close_quietly
from .viewers import Frames, ViewerQueue

if TYPE_CHECKING:
    from .session import Session
    from .table import SessionTable

log = get_logger("linguamesh.scheduler.delivery")

WRITE_TIMEOUT = 10.0
#: Bytes of events waiting for a client's socket before the client is cut (close 4008).
MAX_BACKLOG = 16 * 1024 * 1024
#: Close code for a client cut for reading too slowly (an application code: 4000-4999).
SLOW_READER = 4008
T = TypeVar("T")


class _ResultHead(msgspec.Struct):
    """The fields of a translation_result needed for log records (the rest is skipped)."""

    job_id: str = ""
    utterance_index: int = -1
    tgt_lang: str = ""
    node_id: str | None = None
    trace_id: str | None = None


_head = msgspec.json.Decoder(_ResultHead)
_RESULT_PREFIX = b'{"type":"translation_result"'


class Mailbox(Generic[T]):
    """A pump's queue: items in order, one reader. Unlike ``asyncio.Queue`` its items can
    be looked at (a batch takes what waits right behind its first item)."""

    __slots__ = ("_ready", "items")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self._ready = asyncio.Event()

    def put(self, item: T) -> None:
        self.items.append(item)
        self._ready.set()

    async def get(self) -> T:
        while not self.items:
            self._ready.clear()
            await self._ready.wait()
        return self.items.popleft()


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
    queue: Mailbox[Any],
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
        queued = queue.items
        while queued and isinstance(queued[0], Append):
            payloads += queued.popleft().payloads
        if queued and isinstance(queued[0], ResultItem):
            result = queued.popleft()
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
    except NotExpected as exc:  # the ordering state was lost (Redis restarted empty)
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


#: What a session's pump reads, in order.
PumpItem = Append | ResultItem | _Fetch | _Attach | _Marker


class Delivery:
    """One session's pump (see the module's docstring). Owns the socket attached to the
    session, what was written to it and published to viewers, and the results known
    released or held. It tells the session table when the socket detaches (a failed write,
    a slow reader), when a result is written, and when a result enters the stream."""

    def __init__(self, session: Session, table: SessionTable, store: StateStore, tasks: Tasks) -> None:
        self.session = session
        self.session_id = session.session_id
        self.table = table
        self.store = store
        self.tasks = tasks
        self.conn: Transport | None = None
        #: last seq written to ``conn`` (or, with no connection, the last seq seen)
        self.written = 0
        self.published = 0
        self._queue: Mailbox[PumpItem] = Mailbox()
        self._pump: asyncio.Task[None] | None = None
        #: bytes of events queued for the pump (see ``_queued``), and the most allowed
        self.backlog = 0
        self.max_backlog = MAX_BACKLOG
        #: viewers (SSE): each gets every event after it is in the history
        self.subscribers: set[ViewerQueue] = set()
        #: per target language: results seen released and results held in the ordering
        #: buffer, written back if Redis restarts empty (``SessionTable.restore``)
        self.order: dict[str, KnownOrder] = {}

    async def _heal(self) -> None:
        await self.table.restore(self.session)

    def start(self) -> None:
        self._pump = self.tasks.spawn(self._run(), f"session-pump-{self.session_id}")

    # ------------------------------------------------------------------ producers

    def emit(self, msg: msgspec.Struct) -> None:
        """Queue an event (numbered by the store when it enters the history)."""
        data = encode(msg)
        self._queue.put(Append([data]))
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
        self._queue.put(ResultItem(tgt_lang, index, data, end, on_end))
        self._queued(len(data))

    def deliver(self, events: list[tuple[int, bytes]], seq: int) -> None:
        """Another instance appended these events (up to ``seq``): write them in order."""
        self._queue.put(_Fetch(seq, events))
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
            self.tasks.spawn(
                close_quietly(conn, SLOW_READER, "slow reader: resume to get the rest"), "slow-reader-cut"
            )

    async def attach(self, conn: Transport, last_seq: int, greeting: Callable[[int], bytes] | None) -> int:
        """Attach a connection: write ``greeting(n)``, replay the n events after
        ``last_seq``, then go live — all in the pump, so nothing interleaves.

        Returns n. The events the window no longer holds come from the session's
        transcript (its results, without speech): a resume at any point has every result.
        """
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put(_Attach(conn, last_seq, done, greeting))
        return await done

    def detach(self, conn: Transport) -> bool:
        """The socket ``conn`` is no longer the session's (it closed, failed, or is cut)."""
        if self.conn is conn:
            self.conn = None
            self.table.detached(self.session)
            return True
        return False

    async def flush(self) -> None:
        """Wait until everything queued before this call went through the pump (at once
        when the pump has stopped)."""
        if self._pump is None or self._pump.done():
            return
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put(_Marker(done))
        await done

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass
        # nobody waits for a pump that is gone: markers and attaches still queued are answered
        while self._queue.items:
            item = self._queue.items.popleft()
            if isinstance(item, _Marker) and not item.done.done():
                item.done.set_result(0)
            elif isinstance(item, _Attach) and not item.done.done():
                item.done.set_exception(ProtocolError(ErrorCode.SESSION_NOT_FOUND, "the session was closed"))
        self.backlog = 0
        # viewers end their stream and come back (SSE reconnects with Last-Event-ID): to the
        # session's new holder's events, or to the transcript of an ended session
        for q in list(self.subscribers):
            q.end()
        self.subscribers.clear()

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
        if not self._queue.items:
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
                    self.session.trace_id,
                    heal=self._heal,
                    on_held=self._held,
                )
            )
        elif item.seq > self.written or item.seq > self.published:
            await self._deliver(item.events)
        if self.backlog > self.max_backlog // 2:  # recount what still waits (rare: a backlog)
            self.backlog = sum(map(_size, self._queue.items))

    async def _store(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await until_available(fn, *args, session_id=self.session_id)

    async def _deliver(self, events: list[tuple[int, bytes]], fill: bool = True) -> None:
        """Publish and write ``events`` (and any gap before them) in seq order. A replay
        (``fill`` False) has its holes on purpose: superseded drafts, the window's past."""
        if events:
            floor = min(self.written, self.published)
            if fill and events[0][0] > floor + 1:
                events = await self._fill_gap(floor, events)
        elif fill and (self.conn is not None or self.subscribers):
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
                self.table.result_entered(self.session, fields["job_id"])
            conn = self.conn
            if conn is not None and not self._for_speaker(data):
                self.written = seq  # a listener language's: for its viewers (and the transcript)
                continue
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
                    self.table.result_written(fields["job_id"])
            else:
                if fields is not None:
                    log.warning("result.send_failed", seq=seq, **fields)
                self.written = seq  # it stays in the history for the resume

    def _for_speaker(self, data: bytes) -> bool:
        """The speaker's socket gets the events of its own target languages (and those about
        none), not those of the languages only its viewers listen to."""
        lang = event_lang(data)
        return lang is None or lang in self.session.settings.tgt_langs

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
        if not self.subscribers:
            return
        frames = Frames(seq, data)  # built once, the same bytes for every viewer
        for q in list(self.subscribers):
            if not q.offer(frames):  # too slow: dropped, it reconnects with Last-Event-ID
                self.subscribers.discard(q)

    def _fields(self, data: bytes) -> dict[str, Any]:
        try:
            head = _head.decode(data)
        except msgspec.DecodeError:
            return {"session_id": self.session_id}
        return {
            "trace_id": head.trace_id or self.session.trace_id,
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
            # what the window no longer holds comes back from the transcript: never a gap
            events = await self._store(self.store.replay, self.session_id, item.last_seq)
        except Exception as exc:  # noqa: BLE001 - anything goes to the resuming caller; the pump lives
            item.done.set_exception(exc)
            return
        shown = sum(1 for _, data in events if self._for_speaker(data))
        if item.greeting is not None and not await self._write(item.conn, item.greeting(shown)):
            item.done.set_result(len(events))
            return
        item.done.set_result(len(events))
        self.conn = item.conn
        self.written = item.last_seq
        # a session taken over from another instance starts here with nothing published:
        # what its viewers saw before is theirs, this pump publishes from here on
        self.published = max(self.published, item.last_seq)
        self.table.attached(self.session)
        await self._deliver(events, fill=False)

    async def _write(self, conn: Transport, data: bytes) -> bool:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await conn.send_text(data.decode())
            return True
        except Exception as exc:  # noqa: BLE001 - every transport error means the write did not finish
            log.warning("session.write_failed", session_id=self.session_id, error=repr(exc))
            if self.detach(conn):  # a socket that takes no writes is closed, not left open
                self.tasks.spawn(
                    close_quietly(conn, SLOW_READER, "writes time out: resume to get the rest"),
                    "slow-reader-cut",
                )
            return False
