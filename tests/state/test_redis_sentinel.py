"""Following the Redis master: Sentinel addresses, the locator against real Sentinels,
and the wire's checks (ROLE, READONLY, WAIT) against real redis-server processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from linguamesh.state.redis_sentinel import MasterLocator, SentinelConfig, parse_sentinels
from linguamesh.state.redis_wire import NotMaster, RedisWire

from ..conftest import free_port
from ..redis_server import RedisServer
from ..sentinel_set import SentinelSet


def test_sentinel_addresses_parse_and_bad_ones_are_named() -> None:
    assert parse_sentinels("127.0.0.1:26379, [::1]:26380,") == (("127.0.0.1", 26379), ("::1", 26380))
    for bad in ("", "host", "host:", ":1", "h:0", "h:70000", "h:x"):
        with pytest.raises(ValueError, match="--redis-sentinels"):
            parse_sentinels(bad)


async def test_the_locator_skips_sentinels_that_do_not_answer(tmp_path: Path) -> None:
    dead = free_port()
    with SentinelSet(tmp_path) as ss:
        live = ss.sentinel_ports[0]
        locator = MasterLocator(SentinelConfig((("127.0.0.1", dead), ("127.0.0.1", live))))
        assert await locator.master() == ("127.0.0.1", ss.initial_master)
        assert locator._order[0] == ("127.0.0.1", live)  # asked first next time
        unknown = MasterLocator(SentinelConfig((("127.0.0.1", live),), service="nosuch"))
        with pytest.raises(RedisConnectionError, match="nosuch"):
            await unknown.master()
    with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{dead}"):
        await MasterLocator(SentinelConfig((("127.0.0.1", dead),))).master()


class _Fixed:
    """A locator that names one address (here: a replica, as Sentinels do for a moment
    after a switch they have not seen yet)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def master(self) -> tuple[str, int]:
        return "127.0.0.1", self.port


async def test_the_wire_refuses_a_replica_and_a_readonly_answer_and_confirms_on_replicas(
    tmp_path: Path,
) -> None:
    master = RedisServer(tmp_path / "m").start()
    replica = RedisServer(tmp_path / "r", extra_args=("--replicaof", "127.0.0.1", str(master.port)))
    replica.start()
    try:
        wire = RedisWire("redis://127.0.0.1:1/0", locator=_Fixed(replica.port))  # type: ignore[arg-type]
        with pytest.raises(NotMaster, match="not the master"):
            await wire.call("SET", "k", "v")
        await wire.close()
        plain = RedisWire(replica.url)  # no Sentinels: the replica answers READONLY
        with pytest.raises(NotMaster, match="READONLY"):
            await plain.call("SET", "k", "v")
        await plain.close()
        confirmed = RedisWire(master.url, replicas=1, wait_ms=1000)
        for _ in range(100):  # until the replica has synced
            await confirmed.call("SET", "k", "v")
            if confirmed.confirmed_by == 1:
                break
            await asyncio.sleep(0.1)
        assert confirmed.confirmed_by == 1 and not confirmed.replicas_away
        replica.stop()
        confirmed.wait_ms = 50
        await confirmed.call("SET", "k", "v2")  # no replica confirms within 50 ms: goes on
        assert confirmed.replicas_away and confirmed.unreplicated >= 1
        assert await confirmed.call("GET", "k") == b"v2"  # (no WAIT while they are away)
        await confirmed.close()
    finally:
        replica.stop()
        master.stop()
