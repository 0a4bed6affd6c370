"""An instance dies with work in flight: results a node finished for jobs
whose owner died are accepted by the instance the node re-homes to, and delivered once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from ..conftest import SCALE
from ..fleet import Fleet, Speaker, finish
from ..procs import wait_log

FLAGS = ("--pending-timeout", "8", "--ack-timeout", "2", "--result-timeout", "20")


async def _four_jobs_then_kill_a(tmp_path: Path, flags: tuple[str, ...], delay_ms: int) -> None:
    """Four jobs of a session on B run on node n1, held by A; A is SIGKILLed mid-work, the
    node re-homes to B. Every result arrives once, and no job runs a second attempt."""
    async with Fleet(tmp_path) as fleet:
        a = await fleet.scheduler("A", *flags)
        b = await fleet.scheduler("B", *flags)
        fleet.node("n1", [a.url, b.url], delay_ms=delay_ms, slots=4)  # on A; B is its second choice
        await fleet.wait_node("B", "n1")
        speaker = Speaker([b.url], "s1")
        await speaker.start()
        for _ in range(4):
            await speaker.say()
        await asyncio.sleep(0.8)  # the four jobs run on n1 (handed over to A, its holder)
        fleet.signal("A", signal.SIGKILL)
        killed = time.monotonic()
        t = await finish([speaker], 30 * SCALE)
        done = time.monotonic() - killed
        assert t.ok == 4, t.line()
        # the node's finished work was used: no job ran a second attempt
        records = [json.loads(line) for line in (tmp_path / "n1.1.log").read_text().splitlines()]
        received = [r for r in records if r["event"] == "job.received"]
        assert len(received) == 4, [(r["job_id"], r["attempt_id"]) for r in received]
        assert done < 10 * SCALE, f"results took {done:.1f}s after the kill"


async def test_results_finished_for_a_dead_instance_are_delivered_once_not_redone(tmp_path: Path) -> None:
    """The results reach B before the jobs' deadlines: B forwards them to A, hears nothing
    back, and once A is no longer live claims the jobs and uses the results."""
    await _four_jobs_then_kill_a(tmp_path, FLAGS, delay_ms=600)


async def test_jobs_taken_over_by_the_sweeper_are_offered_to_their_node_again(tmp_path: Path) -> None:
    """The jobs' deadlines pass before the node finishes: B's sweeper takes them over and
    offers each to its node again with the same attempt; the node, still running it, acks
    and sends its result when done — no second attempt, no duplicate."""
    flags = ("--pending-timeout", "8", "--ack-timeout", "1", "--result-timeout", "2")
    await _four_jobs_then_kill_a(tmp_path, flags, delay_ms=1500)


@pytest.mark.parametrize("restarted", [False, True], ids=["dead", "restarted"])
async def test_a_dead_instances_waiting_job_is_taken_over_at_once(tmp_path: Path, restarted: bool) -> None:
    """The soak's lost utterance: A accepted it and the job waited for a node when A was
    SIGKILLed; nobody took the job over before its deadline (the pending timeout), and Redis,
    restarted empty meanwhile, took its record along: no result ever. Now the instance that
    sees A dead (or A itself, started again under its id) takes A's waiting jobs at once; the
    record is written back with the instance's jobs, and the job runs when a node comes."""
    async with Fleet(tmp_path) as fleet:
        flags = ("--pending-timeout", "120", "--ack-timeout", "2", "--result-timeout", "10")
        a = await fleet.scheduler("A", *flags)
        b = await fleet.scheduler("B", *flags)
        speaker = Speaker([a.url, b.url], "s1")  # on A; resumes on B
        await speaker.start()
        await speaker.say()  # no node anywhere: the job waits (its deadline two minutes away)
        await asyncio.sleep(0.5)
        fleet.signal("A", signal.SIGKILL)
        await asyncio.to_thread(fleet.wait_exit, "A", 10)
        if restarted:
            await fleet.start_scheduler("A")
        logs = [tmp_path / "B.1.log", tmp_path / "A.2.log"]
        await wait_log(logs, '"event": "job.taken_over"', 20)  # by B, or by A started again
        assert fleet.redis is not None
        fleet.restart_redis_empty()  # the second fault: the job's record is gone from Redis
        for log in logs if restarted else logs[:1]:  # each instance writes back what it holds
            await wait_log(log, '"event": "cluster.state_restored"', 15)
        await speaker.say()
        fleet.node("n1", [b.url, a.url], delay_ms=50, slots=4)
        t = await finish([speaker], 30 * SCALE)
        assert t.ok == 2, t.line()
