"""Scheduler settings: defaults, flags and ``LINGUAMESH_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from ..core.lifecycle import LifecycleConfig
from ..protocol import DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    host: str = "127.0.0.1"
    port: int = 5010
    instance_id: str = "local"
    pending_timeout: float = 10.0
    ack_timeout: float = 5.0
    result_timeout: float = 30.0
    max_attempts: int = 3
    session_linger: float = 120.0
    heartbeat_interval: float = 5.0
    #: A node that sends nothing for this many heartbeat intervals is dropped.
    heartbeat_misses: float = 3.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_utterance_seconds: float = 30.0
    chunk_idle_gap: float = 1.0
    history_size: int = 1000
    selector: str = "pooled"
    node_token: str | None = None
    operator_token: str | None = None
    #: Shared state for many instances (``redis://host:6379/0``); in memory when unset.
    redis_url: str | None = None

    def lifecycle(self) -> LifecycleConfig:
        return LifecycleConfig(
            pending_timeout=self.pending_timeout,
            ack_timeout=self.ack_timeout,
            result_timeout=self.result_timeout,
            max_attempts=self.max_attempts,
        )

    @classmethod
    def from_env(cls, **overrides: object) -> SchedulerConfig:
        """Defaults, then ``LINGUAMESH_<FIELD>`` variables, then explicit overrides (flags)."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(f"LINGUAMESH_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = kind(raw) if kind is not type(None) else raw
            except ValueError:
                raise ValueError(
                    f"LINGUAMESH_{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)  # type: ignore[arg-type]
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("pending_timeout", "ack_timeout", "result_timeout", "heartbeat_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.selector not in ("pooled", "flat"):
            raise ValueError("selector must be 'pooled' or 'flat'")
