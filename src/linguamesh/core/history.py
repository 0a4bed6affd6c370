"""A session's event history, for resume. Pure.

Every event to a client gets the next ``seq``; the history keeps the last
``max_events`` events — and, with ``size``, at most ``max_bytes`` of them, the newest
event always — and drops what the client acknowledged, so a client that reconnects
with ``last_seq`` gets everything after it.
"""

from __future__ import annotations

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
    """The window: events by seq, oldest first. An event may carry a ``key`` (a draft:
    the transcript so far of one utterance): a newer event with the same key, or one that
    names the key in ``ends`` (the utterance's result), takes its place — the window keeps
    the last word on each draft, so drafts never crowd out what matters. Such holes are
    not gaps: a replay skips them."""

    def __init__(
        self, max_events: int = 1000, max_bytes: int | None = None, size: Callable[[T], int] | None = None
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._size = size
        self.last_seq = 0
        self.bytes = 0
        #: every event up to this seq left by the bounds or an ack (a superseded draft
        #: leaves a hole, not a gap)
        self.evicted = 0
        self._events: dict[int, T] = {}  # in seq order (insertion order)
        self._keyed: dict[bytes, int] = {}  # draft key -> its seq in the window

    def append(self, seq: int, event: T, key: bytes | None = None, ends: tuple[bytes, ...] = ()) -> None:
        """Keep ``event`` under ``seq``; seqs are contiguous (the next one is last_seq + 1).
        The events under ``key`` and under each of ``ends`` leave the window."""
        if seq != self.last_seq + 1:
            raise ValueError(f"seq {seq} is not after {self.last_seq}")
        self.last_seq = seq
        for old in (key, *ends) if key is not None else ends:
            gone = self._keyed.pop(old, None)
            if gone is not None:
                self._remove(gone)
        self._events[seq] = event
        if key is not None:
            self._keyed[key] = seq
            if len(self._keyed) > 2 * self.max_events:  # keys of events the bounds let go
                self._keyed = {k: s for k, s in self._keyed.items() if s in self._events}
        if self._size is not None:
            self.bytes += self._size(event)
        while len(self._events) > self.max_events or (
            self.max_bytes is not None and self.bytes > self.max_bytes and len(self._events) > 1
        ):
            self._evict(next(iter(self._events)))

    def _evict(self, seq: int) -> None:
        self._remove(seq)
        self.evicted = max(self.evicted, seq)

    def _remove(self, seq: int) -> None:
        event = self._events.pop(seq, None)
        if event is not None and self._size is not None:
            self.bytes -= self._size(event)

    @property
    def first_kept(self) -> int:
        """The seq of the oldest event kept (last_seq + 1 when none is)."""
        return next(iter(self._events)) if self._events else self.last_seq + 1

    def since(self, last_seq: int) -> list[tuple[int, T]]:
        if last_seq > self.last_seq:
            raise ReplayGap(f"last_seq {last_seq} is ahead of the session ({self.last_seq})")
        first = self.first_kept
        if last_seq < self.evicted:
            raise ReplayGap(f"events {last_seq + 1}..{self.evicted} are no longer kept", first)
        if last_seq < first:
            return list(self._events.items())
        return [(s, e) for s, e in self._events.items() if s > last_seq]

    def ack(self, seq: int) -> None:
        while self._events and next(iter(self._events)) <= seq:
            self._evict(next(iter(self._events)))
        self.evicted = max(self.evicted, min(seq, self.last_seq))

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
