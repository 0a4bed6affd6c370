"""Token buckets: how much a session or a client address may send (pure; time is passed in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are that many; False (and nothing taken) if not."""
        self._refill(now)
        if amount <= self.tokens:
            self.tokens -= amount
            return True
        return False

    def charge(self, amount: float, now: float) -> None:
        """Take ``amount`` even into debt (at most one burst of it): for what was accepted
        before it could be weighed (streamed audio); later takes wait for the debt."""
        self._refill(now)
        self.tokens = max(-self.burst, self.tokens - amount)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens are there (inf if more than ``burst``)."""
        self._refill(now)
        if amount > self.burst:
            return float("inf")
        return max(0.0, (amount - self.tokens) / self.rate) if self.rate > 0 else float("inf")

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst
