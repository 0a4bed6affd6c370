"""An instance whose event loop falls behind sheds new work instead of losing it: new
sessions and utterances are refused with ``overloaded`` (and ``/readyz`` says 503), the
utterance already streaming goes on to its result with every chunk, and once the loop
catches up new work is taken again. The overload is real: a task that keeps the loop
busy (as a full core would), on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from linguamesh import protocol as p
from linguamesh.client import ClientError, SessionClient

from ..conftest import SCALE, Cluster, eventually, pcm
from .test_live_streaming import collecting, results


@contextlib.asynccontextmanager
async def busy_loop(seconds_per_tick: float = 0.15) -> AsyncIterator[None]:
    """Keep the event loop busy: each turn blocks it ``seconds_per_tick``."""

    async def hog() -> None:
        while True:
            time.sleep(seconds_per_tick)  # (the point: a loop that cannot keep up)
            await asyncio.sleep(0)

    task = asyncio.create_task(hog())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def speak(c: SessionClient, seconds: float, seq: int) -> int:
    """``seconds`` of audio in 0.25 s chunks, each after the loop's next turn: under the
    busy loop the speech keeps up with the clock (a real client is another process); the
    next seq."""
    for _ in range(round(seconds / 0.25)):
        await c.send_chunk(seq, pcm(0.25))
        seq += 1
        await asyncio.sleep(0.01)
    return seq


async def _ready(http: str) -> tuple[int, list[str]]:
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.get(f"{http}/readyz")
    return r.status_code, r.json()["problems"]


@pytest.mark.timeout(120)
async def test_an_overloaded_instance_refuses_new_work_and_keeps_what_it_accepted(cluster: Cluster) -> None:
    s = await cluster.scheduler(overload_lag_ms=100)
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as a, collecting(a) as events:
        seq = await speak(a, 0.5, 0)  # utterance 0 is streaming
        async with busy_loop():
            # it goes on streaming while the loop falls behind
            feeding = asyncio.create_task(speak(a, 2.0, seq))
            await eventually(lambda: s.sched.budget.lag is not None and s.sched.budget.lag.overloaded,
                             10 * SCALE, "the overload")  # fmt: skip
            status, problems = await _ready(s.http)
            assert status == 503 and problems[0].startswith("overloaded: the scheduler is behind by"), (
                problems
            )
            with pytest.raises(ClientError) as refused:
                await SessionClient(s.url, src="en", tgt="es").connect()
            assert refused.value.code == "overloaded", refused.value
            # the utterance already accepted goes on: every chunk reaches the node
            seq = await feeding
            await a.send_chunk(seq, b"", is_final=True)
            await eventually(lambda: len(results(events)) == 1, 30 * SCALE, "utterance 0's result")
            # a new utterance is refused, said once for all its chunks; and the next one too
            for _ in range(2):
                seq = await speak(a, 0.75, seq + 1)
                await a.send_chunk(seq, b"", is_final=True)
            # a third one is refused and goes on after the overload: its rest is refused too
            seq = await speak(a, 0.5, seq + 1)
            await eventually(
                lambda: len([e for e in events if isinstance(e, p.Error)]) == 3, 10 * SCALE, "the refusals"
            )
        await eventually(lambda: not s.sched.budget.lag.overloaded, 10 * SCALE, "catching up")  # type: ignore[union-attr]
        assert (await _ready(s.http))[0] == 200
        seq = await speak(a, 0.5, seq)
        await a.send_chunk(seq, b"", is_final=True)
        await asyncio.sleep(0.5)  # (no result, and no second word of it, would come)
        assert len(results(events)) == 1
        errors = [e for e in events if isinstance(e, p.Error)]
        assert [(e.code, e.ref) for e in errors] == [("overloaded", "utterance 1")] * 3, errors
        # taken again: a new session, and the first session's next utterance
        async with SessionClient(s.url, src="en", tgt="es") as b:
            await b.send_utterance(0, pcm(0.1))
            assert (await b.next_result(10 * SCALE)).status == "ok"
        seq = await speak(a, 0.5, seq + 1)
        await a.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 2, 10 * SCALE, "the next utterance's result")
    got = results(events)
    assert [(r.utterance_index, r.status) for r in got] == [(0, "ok"), (1, "ok")]  # 0 lost, 0 doubled
    assert got[0].text_asr.lower().rstrip(".") == "test utterance 2.50"  # every chunk, once
    assert s.sched.metrics.value("overload_periods") == 1
