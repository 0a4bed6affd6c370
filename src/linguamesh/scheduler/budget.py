"""The process's memory budget for what clients make it hold.

Sessions' replay windows and transcripts (the memory store), events waiting for a
client's socket and for viewers: each is bounded per session, per viewer and per
address; this bounds their sum. Past the budget, new work (sessions, utterances,
viewers) is refused with ``overloaded`` until enough is let go; what was accepted goes
on. The sum is measured at most every MEASURE_EVERY seconds (it walks the sessions).
"""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import ErrorCode, ProtocolError

MEASURE_EVERY = 0.25


class MemoryBudget:
    def __init__(self, limit_bytes: int, measure: Callable[[], int], clock: Callable[[], float]) -> None:
        self.limit = limit_bytes
        self._measure = measure
        self._clock = clock
        self._held = 0
        self._at = float("-inf")

    @property
    def held(self) -> int:
        now = self._clock()
        if now - self._at >= MEASURE_EVERY:
            self._held, self._at = self._measure(), now
        return self._held

    def over(self) -> str | None:
        """Why new work is refused now, or None."""
        held = self.held
        if held < self.limit:
            return None
        mb = 1024 * 1024
        return (
            f"the scheduler holds {held / mb:.0f} MB of events for clients (budget {self.limit / mb:.0f} MB); "
            "try again in a moment"
        )

    def check(self, ref: str | None = None) -> None:
        reason = self.over()
        if reason is not None:
            raise ProtocolError(ErrorCode.OVERLOADED, reason, ref)
