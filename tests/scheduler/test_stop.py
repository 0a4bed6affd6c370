"""A loop that handles errors broadly still ends when its task is cancelled, even when the
cancellation comes out of an await as a TimeoutError (Python 3.11: a timeout racing a cancel)."""

from __future__ import annotations

import asyncio

from linguamesh.scheduler.tasks import stop_if_cancelled


async def _loop(check: bool, turns: list[int], done: asyncio.Event | None = None) -> None:
    while done is None or not done.is_set():
        if check:
            stop_if_cancelled()
        turns.append(1)
        try:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                raise TimeoutError from None  # what the race gives: the cancel turned into a timeout
        except TimeoutError:
            pass  # handled, as a Redis timeout is


async def test_a_loop_that_swallows_its_cancellation_ends_at_its_next_turn() -> None:
    turns: list[int] = []
    task = asyncio.create_task(_loop(True, turns))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1)
    assert done and task.cancelled()


async def test_without_the_check_it_would_run_on() -> None:
    turns: list[int] = []
    done = asyncio.Event()
    task = asyncio.create_task(_loop(False, turns, done))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.1)
    try:
        assert not task.done() and task.cancelling() == 1  # the premise: swallowed, still running
        before = len(turns)
        await asyncio.sleep(0.05)
        assert len(turns) > before
    finally:
        done.set()  # the only way left to end it
        await asyncio.wait({task}, timeout=1)
    assert task.done()
