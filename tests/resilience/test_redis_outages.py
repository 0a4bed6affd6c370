"""Redis stalls and restarts under load: real redis-server,
two real scheduler processes, a real node process; every utterance is counted."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from linguamesh import protocol as p
from linguamesh.state import redis_keys as K

from ..conftest import SCALE
from ..fleet import Fleet, Speaker, finish
from ..procs import wait_log
from ..scripted_node import ScriptedNode

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


async def test_results_held_behind_an_unfinished_one_survive_an_empty_redis_restart(tmp_path: Path) -> None:
    """The soak's loss: results 1..3 of a session were finished but waited in Redis's ordering
    buffer behind utterance 0, whose job was still at its node, when Redis restarted empty; the
    buffer went with it and they never came. Now each session's holder keeps copies of its held
    results (its own pushes, and those another instance pushed: that instance tells it) and
    writes them back with the ordering state. Two sessions: one held by A, the instance its
    jobs run on, and one held by B, whose jobs A runs (handed over with the node)."""
    async with Fleet(tmp_path) as fleet:
        flags = ("--ack-timeout", "5", "--result-timeout", "60", "--pending-timeout", "60")
        a = await fleet.scheduler("A", *flags)
        await fleet.scheduler("B", *flags)
        node = ScriptedNode(a.url, "n1", slots=16)
        await node.connect()
        await fleet.wait_node("B", "n1")
        local, remote = Speaker([a.url], "s-local"), Speaker([fleet.schedulers["B"].url], "s-remote")
        for s in (local, remote):
            await s.start()
            for _ in range(4):
                await s.say()
        assigns = {}
        while len(assigns) < 8:
            job = await node.expect(p.JobAssign, 10)
            assigns[(job.session_id, job.utterance_index)] = job
        for (_, index), job in assigns.items():
            await node.send(p.JobAck(job_id=job.job_id, attempt_id=job.attempt_id))
            if index:
                await node.send(node.result_for(job, f"utterance {index}"))
        assert fleet.redis is not None
        r = aioredis.Redis(port=fleet.redis.port)
        sids = [s.client.session_id for s in (local, remote)]  # type: ignore[union-attr]
        end = time.monotonic() + 10 * SCALE
        while [await r.hlen(K.done(sid, "es")) for sid in sids] != [3, 3]:  # 1..3 held, none released
            assert time.monotonic() < end, [await r.hkeys(K.done(sid, "es")) for sid in sids]
            await asyncio.sleep(0.05)
        await r.aclose()
        restarted = time.monotonic()
        fleet.restart_redis_empty()
        for name in ("A", "B"):  # both notice (0.5 s heartbeats) and write back what they hold
            await wait_log(tmp_path / f"{name}.1.log", '"event": "cluster.state_restored"', 15)
        for (_, index), job in assigns.items():
            if not index:
                await node.send(node.result_for(job, "utterance 0"))
        t = await finish([local, remote], 30 * SCALE)
        assert t.ok == 8, t.line()
        # A wrote its job back before its session: the session held on A got them in order
        got = sorted(local.outcomes, key=lambda k: local.outcomes[k].done_at or 0)
        assert [i for _, i in got] == [0, 1, 2, 3]
        assert all((o.done_at or 0) > restarted for o in local.outcomes.values())
        await node.close()
