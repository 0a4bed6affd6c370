"""A viewer's queue: the session's events waiting for one Server-Sent Events stream.

The producer (a session's pump, or the watch of a session held elsewhere) builds each
event's SSE frames once (:class:`Frames`) and offers the same bytes to every viewer: a
result with its translated speech to the viewers that asked for it (``audio=1``), without
``tts_audio`` to the rest (most viewers read captions; the speech is most of a result's
bytes). A queue is bounded in
events and in bytes: a viewer that does not keep up is dropped (its stream ends; the
browser reconnects with ``Last-Event-ID`` and gets what it missed from the store).
"""

from __future__ import annotations

import asyncio

from ... import protocol as p

#: Events and bytes that may wait for one viewer before it is dropped as too slow.
VIEWER_EVENTS = 1000
VIEWER_BYTES = 4 * 1024 * 1024


def sse_frame(seq: int, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, p.event_type(data).encode(), data)


class Frames:
    """One event's SSE frames, each built at most once for all its viewers: as it is, and
    without its speech (``tts_audio`` cut from a result; other events are the same)."""

    __slots__ = ("_full", "_silent", "data", "seq")

    def __init__(self, seq: int, data: bytes) -> None:
        self.seq, self.data = seq, data
        self._full: bytes | None = None
        self._silent: bytes | None = None

    def get(self, audio: bool) -> bytes:
        if audio:
            if self._full is None:
                self._full = sse_frame(self.seq, self.data)
            return self._full
        if self._silent is None:
            short = p.transcript_form(self.data)  # a result without its speech; None otherwise
            self._silent = (
                self.get(True) if short is None or short == self.data else sse_frame(self.seq, short)
            )
        return self._silent


class ViewerQueue:
    def __init__(
        self, max_events: int = VIEWER_EVENTS, max_bytes: int = VIEWER_BYTES, *, audio: bool = False
    ) -> None:
        self._q: asyncio.Queue[tuple[int, bytes, bytes] | None] = asyncio.Queue()
        #: the viewer asked for the translated speech (``audio=1``)
        self.audio = audio
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bytes = 0
        #: dropped as too slow, or ended by its producer: the stream ends
        self.ended = False

    def offer(self, frames: Frames) -> bool:
        """Queue an event (its frames built once by the producer); False when the viewer is
        dropped (it was too slow) or ended."""
        if self.ended:
            return False
        seq, data, frame = frames.seq, frames.data, frames.get(self.audio)
        if self._q.qsize() >= self.max_events or self.bytes + len(frame) > self.max_bytes:
            self.end()
            return False
        self.bytes += len(frame)
        self._q.put_nowait((seq, data, frame))
        return True

    def end(self) -> None:
        """No more events: the stream ends once it read what is queued."""
        if not self.ended:
            self.ended = True
            self._q.put_nowait(None)

    async def get(self, timeout: float) -> tuple[int, bytes, bytes] | None:
        """The next event; None when the stream must end. TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            item = await self._q.get()
        if item is not None:
            self.bytes -= len(item[2])
        return item
