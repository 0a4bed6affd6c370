"""Whether the scheduler's event loop keeps up (sans-I/O).

One Python process serves every socket of an instance on one core. Past what that core
carries, every message waits longer and the wait grows for as long as the load lasts:
live captions fall seconds behind for everyone, and nobody is told. The shell samples
how late a periodic timer fires (the loop's lag: the time a message waits before it is
read); this gauge takes the samples and decides, with hysteresis, when new work (a
session, an utterance, a viewer) is refused with ``overloaded`` so that the work already
accepted keeps its latency. Nothing accepted is dropped: refusing is the only lever.

* overloaded from the moment the measured lag reaches ``high``;
* not overloaded again once it is below ``low`` (a lower bar: no flapping at the edge).

The measure is the median of the last ``window`` samples: a loop that cannot keep up is
late at every tick, while a single stall (a garbage collection, the process stopped and
continued, a burst of connections) is one late tick and refuses nothing.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class LagGauge:
    """``high``, ``low``: seconds of lag (the median of the last ``window`` samples) to
    start and to stop refusing."""

    high: float = 0.2
    low: float = 0.05
    window: int = 5
    #: the measure (seconds) and whether new work is refused now
    lag: float = 0.0
    overloaded: bool = False
    samples: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(f"low ({self.low}) must be between 0 and high ({self.high})")
        if self.window < 1:
            raise ValueError("window must be at least 1")

    def sample(self, lag: float) -> bool:
        """Take one measurement (seconds a timer fired late); True when the decision changed."""
        self.samples.append(max(0.0, lag))
        if len(self.samples) > self.window:
            self.samples.popleft()
        self.lag = statistics.median(self.samples)
        before = self.overloaded
        if self.lag >= self.high and len(self.samples) == self.window:
            self.overloaded = True
        elif self.lag < self.low:
            self.overloaded = False
        return self.overloaded != before

    def reason(self) -> str | None:
        """Why new work is refused now, or None."""
        if not self.overloaded:
            return None
        return (
            f"the scheduler is behind by {self.lag * 1000:.0f} ms (it refuses new work above "
            f"{self.high * 1000:.0f} ms); try again in a moment, or another instance"
        )
