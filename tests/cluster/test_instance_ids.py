"""Instance ids on a real Redis: two live processes never share one; a restarted one
gets its id back; ids and inboxes of instances that stayed dead are pruned."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import redis.asyncio as aioredis

from linguamesh.state import redis_keys as K

from ..conftest import SCALE
from ..fleet import Fleet
from ..procs import wait_ready


async def test_a_live_instance_id_is_refused_to_a_second_process_and_given_back_after_a_crash(
    tmp_path: Path,
) -> None:
    async with Fleet(tmp_path) as fleet:
        await fleet.scheduler("same")
        await fleet.scheduler("twin", "--instance-id", "same", ready=False)
        code = fleet.wait_exit("twin", 20)
        log = (tmp_path / "twin.1.log").read_text()
        assert code not in (None, 0), log
        assert "held by another live scheduler instance" in log
        same = fleet.schedulers["same"]
        await wait_ready(same.port, same.proc, timeout=5)  # type: ignore[arg-type]  # the first one still serves
        # killed (no clean stop): its restart waits out the dead run's liveness and takes the id
        fleet.signal("same", signal.SIGKILL)
        fleet.wait_exit("same", 10)
        started = time.monotonic()
        await fleet.start_scheduler("same")
        assert time.monotonic() - started < 15 * SCALE
        assert "cluster.joined" in (tmp_path / "same.2.log").read_text()
        # a clean stop gives the id back at once
        fleet.signal("same", signal.SIGTERM)
        fleet.wait_exit("same", 30)
        started = time.monotonic()
        await fleet.start_scheduler("same")
        assert "cluster.instance_id_held" not in (tmp_path / "same.3.log").read_text()


async def test_instances_that_stayed_dead_are_pruned_with_their_inboxes(tmp_path: Path) -> None:
    async with Fleet(tmp_path) as fleet:
        assert fleet.redis is not None
        await fleet.scheduler("keeper", env={"LINGUAMESH_DEAD_INSTANCE_RETENTION": "1"})
        await fleet.scheduler("gone")
        r = aioredis.Redis.from_url(fleet.redis.url)
        try:
            assert await r.exists(K.inbox("gone")) and await r.sismember(K.INSTANCES, "gone")
            fleet.signal("gone", signal.SIGKILL)
            fleet.wait_exit("gone", 10)
            end = time.monotonic() + 20 * SCALE
            while time.monotonic() < end and await r.sismember(K.INSTANCES, "gone"):  # noqa: ASYNC110 - polls Redis
                await asyncio.sleep(0.2)
            assert not await r.sismember(K.INSTANCES, "gone")
            assert not await r.exists(K.inbox("gone"))
            assert not await r.hexists(K.INSTANCES_SEEN, "gone")
            # the live one stays
            assert await r.sismember(K.INSTANCES, "keeper") and await r.exists(K.inbox("keeper"))
            assert "cluster.instances_pruned" in (tmp_path / "keeper.1.log").read_text()
        finally:
            await r.aclose()
        keeper = fleet.schedulers["keeper"]
        await wait_ready(keeper.port, keeper.proc, timeout=5)  # type: ignore[arg-type]
