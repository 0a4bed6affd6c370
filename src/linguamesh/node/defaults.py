"""The default offline engine set of a node started without an engine config."""

from __future__ import annotations

from typing import Any


def default_engines() -> list[dict[str, Any]]:
    """Engine configs for ``linguamesh up`` / ``linguamesh node`` without ``--config``."""
    return []
