"""Redis stalls and restarts under load (issue 18, rows 1 and 2): real redis-server,
two real scheduler processes, a real node process; every utterance is counted."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from ..conftest import SCALE
from ..fleet import Fleet, Speaker, finish

FLAGS = ("--pending-timeout", "8", "--ack-timeout", "2", "--result-timeout", "4")


async def _two_instances(fleet: Fleet) -> Speaker:
    a = await fleet.scheduler("A", *FLAGS)
    b = await fleet.scheduler("B", *FLAGS)
    fleet.node("n1", [a.url], delay_ms=50, slots=8)
    await fleet.wait_node("B", "n1")
    speaker = Speaker([b.url, a.url], "s1")
    await speaker.start()
    return speaker


async def _talk(speaker: Speaker, seconds: float, every: float = 0.2) -> None:
    end = time.monotonic() + seconds * SCALE
    while time.monotonic() < end:
        await speaker.say()
        await asyncio.sleep(every)


async def test_redis_stalled_for_5s_loses_nothing(tmp_path: Path) -> None:
    async with Fleet(tmp_path) as fleet:
        speaker = await _two_instances(fleet)
        await _talk(speaker, 3)
        fleet.signal("redis", signal.SIGSTOP)
        stalled = time.monotonic()
        try:
            talking = asyncio.create_task(_talk(speaker, 5))
            # readiness answers within its own deadline, and says why
            await asyncio.sleep(1.5)
            async with httpx.AsyncClient() as http:
                t0 = time.monotonic()
                ready = await http.get(f"{fleet.schedulers['B'].http}/readyz", timeout=10)
                took = time.monotonic() - t0
            await talking
        finally:
            fleet.signal("redis", signal.SIGCONT)
        assert ready.status_code == 503, ready.text
        assert took < 2.5, f"/readyz took {took:.1f}s"
        assert time.monotonic() - stalled >= 5
        await _talk(speaker, 4)
        t = await finish([speaker], 30 * SCALE)
        assert t.ok >= 20, t.line()  # after the stall the session is served again
        late = [k for k, o in speaker.outcomes.items() if o.sent_at > stalled + 6]
        assert all(speaker.outcomes[k].ends == ["ok"] for k in late), t.line()


async def test_redis_restarted_empty_loses_nothing(tmp_path: Path) -> None:
    async with Fleet(tmp_path) as fleet:
        speaker = await _two_instances(fleet)
        await _talk(speaker, 3)
        assert fleet.redis is not None
        fleet.redis.stop()
        gone = time.monotonic()
        talking = asyncio.create_task(_talk(speaker, 2))
        await asyncio.sleep(1)
        fleet.redis.start()  # empty: no persistence
        await talking
        await _talk(speaker, 3)
        speaker.drop()  # the client comes back on the other instance, which takes the session over
        await _talk(speaker, 3)
        t = await finish([speaker], 30 * SCALE)
        late = [k for k, o in speaker.outcomes.items() if o.sent_at > gone + 5]
        assert late and all(speaker.outcomes[k].ends == ["ok"] for k in late), t.line()
        assert speaker.reconnects >= 1 and speaker.abandoned == 0
