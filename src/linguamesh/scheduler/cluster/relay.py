"""Relays: a session's events produced on an instance that does not hold the session.

A job handed over to the instance of its node runs there, but its session is held by
another instance: what the job emits goes into the session's history through a relay
(the same store steps as a session's pump) and the holder is told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from ...core.ids import SessionId
from ...observability.logging import get_logger
from ...protocol import encode
from ...state.base import DependencyDown, JobEnd, Notify, StateStore
from ..retry import until_available
from ..sessions.delivery import Append, Mailbox, ResultItem, store_batch
from ..tasks import Tasks

log = get_logger("linguamesh.scheduler.delivery")

#: A relay gives up on a session the store has lost for this long (its holder is gone too).
RELAY_GIVE_UP = 300.0


class SessionRelay:
    """Events produced on this instance for a session another instance holds (the job
    was handed over to the instance of its node): appended to the session's history in
    order — batched like a session's pump, a result with the events before it — and
    the holder is told, carrying them: by the store in the same step when
    ``notice()`` names the holder, else by ``notify(session_id, events)``. The history
    is written first, so a holder that dies loses nothing: the client resumes from it.

    Runs only while it has work; ``on_idle`` is called when its queue is empty.
    """

    def __init__(
        self,
        session_id: SessionId,
        store: StateStore,
        notify: Callable[[SessionId, list[tuple[int, bytes]]], Awaitable[None]],
        on_idle: Callable[[SessionRelay], None],
        tasks: Tasks,
        notice: Callable[[SessionId], Awaitable[Notify | None]] | None = None,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.tasks = tasks
        self._notify = notify
        self._notice = notice
        self._on_idle = on_idle
        self._queue: Mailbox[Append | ResultItem] = Mailbox()
        self._task: asyncio.Task[None] | None = None

    def emit(self, msg: msgspec.Struct) -> None:
        self._queue.put(Append([encode(msg)]))
        self._wake()

    def emit_result(
        self,
        tgt_lang: str,
        index: int,
        msg: msgspec.Struct,
        end: JobEnd | None,
        on_end: Callable[[], None] | None,
    ) -> None:
        self._queue.put(ResultItem(tgt_lang, index, encode(msg), end, on_end))
        self._wake()

    async def flushed(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until what was queued is in the history."""
        if self._task is not None:
            await asyncio.wait([self._task], timeout=timeout)

    def _drop(self, item: Append | ResultItem, exc: DependencyDown) -> None:
        """The session stayed gone from the store for RELAY_GIVE_UP: no holder will come back
        for it. Its job ends here (the record expires by itself)."""
        log.warning(
            "relay.dropped", session_id=self.session_id, result=isinstance(item, ResultItem), error=str(exc)
        )
        if isinstance(item, ResultItem) and item.on_end is not None:
            item.on_end()

    async def _lookup(self) -> Notify | None:
        return await self._notice(self.session_id) if self._notice is not None else None

    def stop(self) -> None:
        """The process stops: the relay's task is cancelled (what it holds is logged as lost)."""
        if self._task is not None:
            log.warning("relay.stopped", session_id=self.session_id, queued=len(self._queue.items))
            self._task.cancel()

    def _wake(self) -> None:
        if self._task is None:
            # a fresh context (Tasks): the relay must not carry the log context of the job that woke it
            self._task = self.tasks.spawn(self._run(), f"session-relay-{self.session_id}")

    async def _run(self) -> None:
        sid = self.session_id
        try:
            while self._queue.items:
                # every store step is retried through an outage: what a job produced is not
                # dropped while the session may still exist (its holder restores it)
                notice = await until_available(self._lookup, session_id=sid)
                item = self._queue.items.popleft()
                try:
                    events = await store_batch(
                        self.store, sid, item, self._queue, notify=notice, give_up=RELAY_GIVE_UP
                    )
                except DependencyDown as exc:
                    self._drop(item, exc)
                    continue
                if events and not (notice is not None and notice.sent):
                    await until_available(self._notify, sid, events, session_id=sid)
        finally:
            self._task = None
            if not self._queue.items:
                self._on_idle(self)
