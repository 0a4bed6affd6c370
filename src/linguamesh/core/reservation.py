"""Slot reservation rules. The Redis Lua script implements the same rules.

A node has ``max_concurrent_jobs`` slots. A slot is held by one
``(job_id, attempt_id)`` until released or until its TTL passes, so a crashed
scheduler cannot leak slots. Reserving the same key twice is idempotent (it
refreshes the TTL and does not take a second slot).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SlotKey = tuple[str, int]


@dataclass(slots=True)
class NodeSlots:
    capacity: int
    held: dict[SlotKey, float] = field(default_factory=dict)

    def purge(self, now: float) -> int:
        expired = [k for k, exp in self.held.items() if exp <= now]
        for k in expired:
            del self.held[k]
        return len(expired)

    def reserve(self, key: SlotKey, now: float, ttl: float) -> bool:
        self.purge(now)
        if key in self.held:
            self.held[key] = now + ttl
            return True
        if len(self.held) >= self.capacity:
            return False
        self.held[key] = now + ttl
        return True

    def release(self, key: SlotKey) -> bool:
        return self.held.pop(key, None) is not None

    @property
    def used(self) -> int:
        return len(self.held)
