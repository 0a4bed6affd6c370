"""When the scheduler refuses new work with ``overloaded``: its memory budget is spent,
or its event loop falls behind.

Sessions' replay windows and transcripts (the memory store), events waiting for a
client's socket and for viewers: each is bounded per session, per viewer and per
address; the memory budget bounds their sum. Past the budget, new work (sessions,
utterances, viewers) is refused with ``overloaded`` until enough is let go; what was
accepted goes on. The sum is measured at most every MEASURE_EVERY seconds (it walks the
sessions). The same refusal comes when the event loop is behind (``core/overload.py``):
the shell here samples how late a timer fires, every LAG_EVERY seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..core.overload import LagGauge
from ..protocol import ErrorCode, ProtocolError

MEASURE_EVERY = 0.25
LAG_EVERY = 0.1
#: after an overload, time rules on clients' chunks (idle gap, trickle) wait this long
BEHIND_AFTER = 10.0


class MemoryBudget:
    def __init__(
        self,
        limit_bytes: int,
        measure: Callable[[], int],
        clock: Callable[[], float],
        lag: LagGauge | None = None,
    ) -> None:
        self.limit = limit_bytes
        self._measure = measure
        self._clock = clock
        self._held = 0
        self._at = float("-inf")
        #: the event loop's lag (None: not watched)
        self.lag = lag
        #: when (loop time) the loop was last found overloaded
        self.overloaded_at = float("-inf")

    async def watch_lag(self, on_change: Callable[[bool], None]) -> None:
        """Sample the event loop's lag for ever (a task): how late a LAG_EVERY timer fires."""
        assert self.lag is not None
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_EVERY)
            if self.lag.sample(loop.time() - start - LAG_EVERY):
                on_change(self.lag.overloaded)
            if self.lag.overloaded:
                self.overloaded_at = loop.time()

    def behind(self) -> bool:
        """The loop is behind now, or was overloaded within BEHIND_AFTER seconds: frames
        may still wait in the sockets' buffers (the lag measures only the wait inside the
        process), so a client's chunks arrive late through no fault of its own."""
        if self.lag is None:
            return False
        recent = asyncio.get_running_loop().time() - self.overloaded_at < BEHIND_AFTER
        return recent or self.lag.lag >= self.lag.low

    @property
    def held(self) -> int:
        now = self._clock()
        if now - self._at >= MEASURE_EVERY:
            self._held, self._at = self._measure(), now
        return self._held

    def over(self) -> str | None:
        """Why new work is refused now, or None."""
        if self.lag is not None and (behind := self.lag.reason()) is not None:
            return behind
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
