"""A session's event history, for resume. Pure.

Every event to a client gets the next ``seq``; the history keeps the last
``max_events`` events — and, with ``size``, at most ``max_bytes`` of them, the newest
event always — and drops what the client acknowledged, so a client that reconnects
with ``last_seq`` gets everything after it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ReplayGap(Exception):
    """The events after ``last_seq`` are no longer all kept. ``kept_from``: the first
    event still kept (None when ``last_seq`` is ahead of the session)."""

    def __init__(self, message: str, kept_from: int | None = None) -> None:
        super().__init__(message)
        self.kept_from = kept_from


class EventHistory(Generic[T]):
    def __init__(
        self, max_events: int = 1000, max_bytes: int | None = None, size: Callable[[T], int] | None = None
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._size = size
        self.last_seq = 0
        self.bytes = 0
        self._events: deque[tuple[int, T]] = deque()

    def append(self, seq: int, event: T) -> None:
        """Keep ``event`` under ``seq``; seqs are contiguous (the next one is last_seq + 1)."""
        if seq != self.last_seq + 1:
            raise ValueError(f"seq {seq} is not after {self.last_seq}")
        self.last_seq = seq
        self._events.append((seq, event))
        if self._size is not None:
            self.bytes += self._size(event)
        while len(self._events) > self.max_events or (
            self.max_bytes is not None and self.bytes > self.max_bytes and len(self._events) > 1
        ):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, event = self._events.popleft()
        if self._size is not None:
            self.bytes -= self._size(event)

    @property
    def first_kept(self) -> int:
        """The seq of the oldest event kept (last_seq + 1 when none is)."""
        return self._events[0][0] if self._events else self.last_seq + 1

    def since(self, last_seq: int) -> list[tuple[int, T]]:
        if last_seq > self.last_seq:
            raise ReplayGap(f"last_seq {last_seq} is ahead of the session ({self.last_seq})")
        first = self._events[0][0] if self._events else self.last_seq + 1
        if last_seq + 1 < first:
            raise ReplayGap(f"events {last_seq + 1}..{first - 1} are no longer kept", first)
        # seqs are contiguous: start at the right offset instead of scanning
        return list(itertools.islice(self._events, max(0, last_seq + 1 - first), None))

    def ack(self, seq: int) -> None:
        while self._events and self._events[0][0] <= seq:
            self._drop_oldest()

    def __len__(self) -> int:
        return len(self._events)


def compacted(
    last_seq: int,
    current: int,
    window: list[tuple[int, T]],
    first_kept: int,
    transcript: list[tuple[int, T]],
) -> list[tuple[int, T]]:
    """What a client that has seen up to ``last_seq`` gets back: every event after it that
    the window (``window``: the kept events from ``first_kept`` on, in order) still holds,
    preceded by the transcript's entries for the part the window no longer holds — the
    session's finished results, as a compacted log keeps the last word on each key. A
    client never needs the drafts and statuses that the results overtook.

    ``current`` is the session's last seq; a ``last_seq`` ahead of it raises ReplayGap."""
    if last_seq > current:
        raise ReplayGap(f"last_seq {last_seq} is ahead of the session ({current})")
    older = [(s, e) for s, e in transcript if last_seq < s < first_kept]
    return older + [(s, e) for s, e in window if s > last_seq]
