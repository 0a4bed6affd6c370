"""Calls to the state store that wait out an outage: what was accepted is never dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..observability.logging import get_logger
from ..state.base import DependencyDown, SessionStateLost
from .tasks import stop_if_cancelled

log = get_logger("linguamesh.scheduler.delivery")

#: The longest wait between two tries (the wait doubles from 50 ms).
RETRY_MAX = 2.0
T = TypeVar("T")

#: Heals what the store lost of a session (its holder writes the session back).
Heal = Callable[[], Awaitable[None]]


async def until_available(
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    heal: Heal | None = None,
    give_up: float | None = None,
    **log_fields: Any,
) -> T:
    """Call the store until it answers.

    When the store lost the session's numbering (:class:`SessionStateLost`), ``heal``
    (the holder's) writes it back first; without one the call waits for the holder.
    With ``give_up`` (seconds) the last error is raised after that long."""
    delay = 0.05
    loop = asyncio.get_running_loop()
    end = loop.time() + give_up if give_up is not None else None
    logged = False
    while True:
        stop_if_cancelled()
        try:
            result = await fn(*args)
            if logged:
                log.info("store.available_again", **log_fields)
            return result
        except DependencyDown as exc:
            if end is not None and loop.time() >= end:
                raise
            if not logged:  # one record per outage, not one per try
                log.warning("store.unavailable_retrying", error=str(exc), **log_fields)
                logged = True
            if isinstance(exc, SessionStateLost) and heal is not None:
                try:
                    await heal()
                    continue
                except DependencyDown:
                    pass
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
