"""Per ``(session, tgt_lang)`` ordered delivery. Pure.

Results are released in ``utterance_index`` order among the jobs that exist:
an index that was never received never blocks (gaps are allowed); a job
that exists blocks later results until it ends — and every job ends in
exactly one result, so the wait is bounded by the job's timeouts.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

#: Delivered indices remembered per stream to refuse a repeat; older ones are refused
#: by a floor (the highest index forgotten), so memory stays bounded.
REMEMBERED = 10_000


class DuplicateIndex(Exception):
    pass


class OrderError(Exception):
    """A result the ordering state cannot take."""


class AlreadyDelivered(OrderError):
    """A result for an index whose result was released already: a copy, to be dropped (not
    to be confused with :class:`NotExpected`)."""


class NotExpected(OrderError):
    """A result for an index the ordering state does not expect: it never knew it (the
    state was lost, e.g. Redis restarted empty) or the result came already."""


class OrderedStream(Generic[T]):
    def __init__(self) -> None:
        self._waiting: list[int] = []  # heap of indices still expected
        self._expected: set[int] = set()
        self._done: dict[int, T] = {}
        self._delivered: set[int] = set()
        self._delivered_order: deque[int] = deque()
        self._floor = -1
        self.delivered_up_to = -1

    def expect(self, index: int) -> None:
        """Register a job's index. Indices are registered in increasing order per stream,
        but a lower one arriving late (retry of a lost frame) is accepted too. An index
        expected or delivered already is a DuplicateIndex."""
        if index in self._expected or index in self._delivered or index <= self._floor:
            raise DuplicateIndex(index)
        self._expected.add(index)
        heapq.heappush(self._waiting, index)

    def complete(self, index: int, item: T) -> list[T]:
        """Record a finished item; return every item now deliverable, in order."""
        if index in self._delivered or (index <= self._floor and index not in self._expected):
            raise AlreadyDelivered(f"index {index} was delivered already")
        if index not in self._expected or index in self._done:
            raise NotExpected(f"index {index} was not expected or already completed")
        self._done[index] = item
        ready: list[T] = []
        while self._waiting and self._waiting[0] in self._done:
            i = heapq.heappop(self._waiting)
            self._expected.discard(i)
            ready.append(self._done.pop(i))
            self.delivered_up_to = max(self.delivered_up_to, i)
            self._delivered.add(i)
            self._delivered_order.append(i)
            if len(self._delivered_order) > REMEMBERED:
                old = self._delivered_order.popleft()
                self._delivered.discard(old)
                self._floor = max(self._floor, old)
        return ready

    @property
    def pending(self) -> int:
        return len(self._waiting)
