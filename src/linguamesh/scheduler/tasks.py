"""Background tasks and timers of one process: each starts in a fresh log context, a
crash is logged, never lost, and :meth:`Tasks.stop` cancels every one still pending."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
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
    """The one owner of a process's background tasks and timers."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self.stopped = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        # a fresh context: a task must not inherit the log context (job ids) of its spawner
        task = asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def call_later(self, delay: float, fn: Callable[[], object]) -> asyncio.TimerHandle:
        """Call ``fn`` after ``delay`` seconds (in a fresh log context), unless the timer is
        cancelled or the process stops first."""
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            fn()

        handle = asyncio.get_running_loop().call_later(delay, fire, context=contextvars.Context())
        self._timers.add(handle)
        return handle

    def cancel(self, handle: asyncio.TimerHandle | None) -> None:
        """Cancel a timer of :meth:`call_later` (None, fired or cancelled: nothing)."""
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task.crashed", task=task.get_name(), error=repr(task.exception()))

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every timer and every task still running and wait for the tasks (at most
        ``timeout``: a stop is bounded; a task that has not ended by then is named in the
        log)."""
        self.stopped = True
        for handle in list(self._timers):
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("tasks.left_running", tasks=sorted(t.get_name() for t in pending))
