"""Watching a session held by another instance: its viewers on this instance.

Every Redis script that numbers a session's events publishes the session's last seq on
the session's channel (``redis_keys.events_channel``). An instance with viewers of a
session it does not hold subscribes to that channel — one subscription per session,
however many viewers — and on each notice reads what is new from the store (the
compacted replay, so a watcher that fell behind gets every result, never a gap) and
hands it to each viewer's queue.

Why pub/sub and not the instances' inboxes: the holder need not know who watches (a
viewer can come to any instance, and the holder can change under it); a notice lost in
a reconnect costs nothing, because a notice only says "read again" and each watch also
reads every ``POLL_S`` seconds; and a session nobody watches costs one ``PUBLISH`` to no
one per append.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from ...core.ids import SessionId
from ...observability.logging import get_logger
from ...state import redis_keys as K
from ...state.base import DependencyDown
from ...state.redis import RedisStateStore
from ..sessions.viewers import Frames, ViewerQueue
from ..tasks import Tasks, stop_if_cancelled

log = get_logger("linguamesh.scheduler")

#: A watch reads the store this often even without a notice (one lost in a reconnect).
POLL_S = 5.0
#: Events read from the store at a time (a watch far behind reads in pages).
PAGE = 500


@dataclass(eq=False)
class _Watch:
    session_id: SessionId
    read_up_to: int
    queues: set[ViewerQueue] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class EventWatch:
    def __init__(self, store: RedisStateStore, tasks: Tasks) -> None:
        self.store = store
        self.tasks = tasks
        self._watches: dict[SessionId, _Watch] = {}
        self._listener: asyncio.Task[None] | None = None

    def queued_bytes(self) -> int:
        return sum(q.bytes for w in self._watches.values() for q in w.queues)

    def watching(self) -> int:
        return sum(len(w.queues) for w in self._watches.values())

    def subscribe(self, session_id: SessionId, after: int, queue: ViewerQueue) -> None:
        """Feed ``queue`` the session's events after ``after`` (the viewer replayed up to
        it), as they come; the queue ends when the viewer is dropped as too slow."""
        w = self._watches.get(session_id)
        if w is None:
            w = self._watches[session_id] = _Watch(session_id, after)
            w.task = self.tasks.spawn(self._follow(w), "session-watch")
        w.read_up_to = min(w.read_up_to, after)  # a newcomer behind the others: read from it on
        w.queues.add(queue)
        w.wake.set()
        if self._listener is None or self._listener.done():
            self._listener = self.tasks.spawn(self._listen(), "session-watch-listener")

    def unsubscribe(self, session_id: SessionId, queue: ViewerQueue) -> None:
        w = self._watches.get(session_id)
        if w is None:
            return
        w.queues.discard(queue)
        if not w.queues:
            del self._watches[session_id]
            if w.task is not None:
                w.task.cancel()

    async def _follow(self, w: _Watch) -> None:
        """Read what is new whenever told (or every POLL_S) and hand it to the viewers."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.wake.wait(), POLL_S)
            w.wake.clear()
            try:
                events = await self.store.replay(w.session_id, w.read_up_to, PAGE)
            except DependencyDown:
                await asyncio.sleep(1.0)
                continue
            except Exception as exc:  # noqa: BLE001 - ahead of a session Redis lost: read again later
                stop_if_cancelled()
                log.info("session_watch.read_failed", session_id=w.session_id, error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            for seq, data in events:
                frames = Frames(seq, data)  # built once, the same bytes for every viewer
                for q in list(w.queues):
                    if not q.offer(frames):  # too slow: dropped (it reconnects)
                        w.queues.discard(q)
                w.read_up_to = max(w.read_up_to, seq)
            if len(events) == PAGE:
                w.wake.set()  # more to read

    async def _listen(self) -> None:
        """One pub/sub connection for every watched session: a notice wakes its watch."""
        prefix = K.events_channel("")
        while self._watches:
            pubsub = self.store.r.pubsub()
            subscribed: set[str] = set()
            try:
                while self._watches:
                    wanted = {K.events_channel(sid) for sid in self._watches}
                    if wanted - subscribed:
                        await pubsub.subscribe(*(wanted - subscribed))
                    if subscribed - wanted:
                        await pubsub.unsubscribe(*(subscribed - wanted))
                    subscribed = wanted
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if msg is not None and msg.get("type") == "message":
                        sid = SessionId(msg["channel"].decode()[len(prefix) :])
                        w = self._watches.get(sid)
                        if w is not None:
                            w.wake.set()
            except Exception as exc:  # noqa: BLE001 - Redis went away: subscribe again, and read once
                stop_if_cancelled()
                log.info("session_watch.listener_failed", error=repr(exc))
                await asyncio.sleep(0.5)
                for w in self._watches.values():
                    w.wake.set()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
