"""Redis that fails over: a master, a replica and three Sentinels (real redis-server
processes), two scheduler instances on ``--redis-sentinels`` with sessions and nodes on
both, load running; every utterance is counted (0 lost, 0 duplicated)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..conftest import SCALE
from ..fleet import Fleet, Speaker, finish
from ..sentinel_set import SentinelSet

FLAGS = ("--pending-timeout", "8", "--ack-timeout", "2", "--result-timeout", "4")


async def _start(fleet: Fleet, ss: SentinelSet) -> list[Speaker]:
    flags = ("--redis-sentinels", ss.addresses, *FLAGS)
    a = await fleet.scheduler("A", "--instance-id", "A", *flags)
    b = await fleet.scheduler("B", "--instance-id", "B", *flags)
    fleet.node("n1", [a.url, b.url], delay_ms=50, slots=8)
    fleet.node("n2", [b.url, a.url], delay_ms=50, slots=8)
    for s in ("A", "B"):
        for n in ("n1", "n2"):
            await fleet.wait_node(s, n)
    speakers = [Speaker([a.url, b.url], "s-a1"), Speaker([b.url, a.url], "s-b1"),
                Speaker([a.url, b.url], "s-a2"), Speaker([b.url, a.url], "s-b2")]  # fmt: skip
    for s in speakers:
        await s.start()
    return speakers


async def _talk(
    speakers: list[Speaker], seconds: float, every: float = 0.1, until: asyncio.Event | None = None
) -> None:
    """Speak for ``seconds``, or (with ``until``) until it is set."""
    end = time.monotonic() + seconds * SCALE
    while (until is not None and not until.is_set()) or (until is None and time.monotonic() < end):
        for s in speakers:
            await s.say()
        await asyncio.sleep(every)


def _after(speakers: list[Speaker], since: float) -> tuple[int, int]:
    """Utterances sent after ``since``, and how many of them were served (ok)."""
    sent = [o for s in speakers for o in s.outcomes.values() if o.sent_at > since]
    return len(sent), sum(1 for o in sent if o.ends[:1] == ["ok"])


def _longest_gap(speakers: list[Speaker]) -> float:
    done = sorted(
        o.done_at for s in speakers for o in s.outcomes.values() if o.done_at and o.ends[:1] == ["ok"]
    )
    return max((b - a for a, b in itertools.pairwise(done)), default=0.0)


async def _through_failover(
    speakers: list[Speaker], fault: Callable[[], Awaitable[float]], after: float = 10.0
) -> float:
    """Speak while ``fault`` runs (it returns when the Sentinels switched) and ``after``
    seconds past the switch, however long the switch took; returns its time."""
    done = asyncio.Event()
    talking = asyncio.create_task(_talk(speakers, 0, until=done))
    try:
        switched = await fault()
        await asyncio.sleep(max(0.0, switched + after - time.monotonic()))
    finally:
        done.set()
        await talking
    return switched


async def _counted(name: str, speakers: list[Speaker], since: float, failover: float = 0.0) -> None:
    """0 lost and 0 duplicated (``finish``), and at least 100 utterances sent after ``since``,
    90 % of them served; the figures printed."""
    t = await finish(speakers, 30 * SCALE)
    served = _after(speakers, since)
    print(
        f"\n{name}: failover {failover:.2f} s (kill to the Sentinels' switch); longest gap without "
        f"results {_longest_gap(speakers):.2f} s; after the switch {served[1]}/{served[0]} served; {t.line()}"
    )
    assert served[0] >= 100 and served[1] >= 0.9 * served[0], served


async def test_master_killed_under_load_the_promoted_replica_serves_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    with SentinelSet(tmp_path / "redis") as ss:
        async with Fleet(tmp_path, redis=False) as fleet:
            speakers = await _start(fleet, ss)
            await _talk(speakers, 3)
            killed_at = time.monotonic()
            old = ss.kill_master()
            switched = await _through_failover(speakers, lambda: asyncio.to_thread(ss.wait_failover, old))
            await _counted("master killed", speakers, switched, switched - killed_at)


async def test_fail_over_and_back(tmp_path: Path) -> None:
    """The old master comes back (as a replica of the new one), then the new master is
    killed: the service follows both switches."""
    with SentinelSet(tmp_path / "redis") as ss:
        async with Fleet(tmp_path, redis=False) as fleet:
            speakers = await _start(fleet, ss)
            await _talk(speakers, 2)

            async def there_and_back() -> float:
                first = ss.kill_master()
                await asyncio.to_thread(ss.wait_failover, first)
                ss.restart(first)  # empty; the Sentinels make it a replica of the new master
                await asyncio.to_thread(ss.wait_synced)
                second = ss.kill_master()
                switched = await asyncio.to_thread(ss.wait_failover, second)
                assert ss.master_port() == first  # back on the first server
                return switched

            switched = await _through_failover(speakers, there_and_back)
            await _counted("fail over and back", speakers, switched + 1)


async def test_writes_acknowledged_by_a_stalled_master_survive_its_death(tmp_path: Path) -> None:
    """The hard window: the master stalls for 0.5 s under load, then dies, so what it
    acknowledged just before may not have reached the replica; each write the scheduler
    acted on was confirmed on the replica first (WAIT): still 0 lost, 0 duplicated."""
    with SentinelSet(tmp_path / "redis") as ss:
        async with Fleet(tmp_path, redis=False) as fleet:
            speakers = await _start(fleet, ss)
            await _talk(speakers, 2, every=0.05)
            ss.signal_master(signal.SIGSTOP)
            await _talk(speakers, 0.5, every=0.05)
            old = ss.kill_master()
            switched = await _through_failover(
                speakers, lambda: asyncio.to_thread(ss.wait_failover, old), after=8.0
            )
            await _counted("stalled, then killed", speakers, switched)


async def test_two_of_three_sentinels_lost_with_the_master_healthy_changes_nothing(tmp_path: Path) -> None:
    with SentinelSet(tmp_path / "redis") as ss:
        async with Fleet(tmp_path, redis=False) as fleet:
            speakers = await _start(fleet, ss)
            await _talk(speakers, 2)
            lost_at = time.monotonic()
            for port in ss.sentinel_ports[:2]:
                ss.kill_sentinel(port)
            await _talk(speakers, 4)
            t = await finish(speakers, 30 * SCALE)
            assert t.failed == {}, t.line()
            assert _after(speakers, lost_at)[1] == _after(speakers, lost_at)[0]
