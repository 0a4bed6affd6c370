"""Background tasks of one scheduler instance: each starts in a fresh log context and
a crash is logged, never lost."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

from ..observability.logging import get_logger

log = get_logger("linguamesh.scheduler")


def stop_if_cancelled() -> None:
    """Raise CancelledError when the current task was asked to stop. A loop that handles
    errors broadly calls it each turn: on Python 3.11 a cancellation that meets a timeout at
    the same moment (``asyncio.timeout``, ``wait_for``, redis-py's reads) can come out as a
    TimeoutError, which such a loop would handle and go on, so the task never ended."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Tasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        # a fresh context: a task must not inherit the log context (job ids) of its spawner
        task = asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task.crashed", task=task.get_name(), error=repr(task.exception()))

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every task still running and wait for them (at most ``timeout``: a stop is
        bounded; a task that has not ended by then is named in the log)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("tasks.left_running", tasks=sorted(t.get_name() for t in pending))
