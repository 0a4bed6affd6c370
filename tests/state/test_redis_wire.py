"""RedisWire against a real redis-server: automatic pipelining, errors, reconnects, timeouts."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from linguamesh.state.redis_wire import RedisWire, Script

from ..conftest import SCALE
from ..redis_server import RedisServer

ECHO = Script("echo", "return {KEYS[1], ARGV[1]}")


async def test_concurrent_calls_share_writes_and_each_gets_its_own_reply(redis_url: str) -> None:
    wire = RedisWire(redis_url)
    try:
        replies = await asyncio.gather(*(wire.call("INCR", "counter") for _ in range(500)))
        assert sorted(replies) == list(range(1, 501))
        echoed = await asyncio.gather(*(wire.call("ECHO", f"m{i}") for i in range(200)))
        assert echoed == [f"m{i}".encode() for i in range(200)]  # in the callers' order
        assert wire.commands >= 700 + 1 and wire.writes < wire.commands / 10  # pipelined
    finally:
        await wire.close()


async def test_an_error_reply_fails_one_call_and_the_connection_goes_on(redis_url: str) -> None:
    wire = RedisWire(redis_url)
    try:
        ok, bad, after = await asyncio.gather(
            wire.call("SET", "k", "v"), wire.call("HSET", "k"), wire.call("GET", "k"), return_exceptions=True
        )
        assert ok == b"OK" and isinstance(bad, ResponseError) and after == b"v"
        assert "wrong number of arguments" in str(bad)
        replies = await wire.call_many(("INCR", "k"), ("GET", "k"))
        assert isinstance(replies[0], ResponseError) and replies[1] == b"v"
        assert await wire.transaction(("SET", "t", "1"), ("INCR", "t")) == [b"OK", 2]
    finally:
        await wire.close()


async def test_scripts_are_loaded_on_connect_and_sent_again_after_a_flush(redis_url: str) -> None:
    wire = RedisWire(redis_url, scripts=(ECHO,))
    try:
        assert await wire.run(ECHO, ["key"], ["arg"]) == [b"key", b"arg"]
        assert await wire.call("SCRIPT", "EXISTS", ECHO.sha) == [1]
        await wire.call("SCRIPT", "FLUSH")
        assert await wire.run(ECHO, ["k2"], [7]) == [b"k2", b"7"]  # NOSCRIPT -> EVAL
    finally:
        await wire.close()


async def test_the_database_in_the_url_is_selected(redis_server: RedisServer) -> None:
    wire = RedisWire(f"redis://127.0.0.1:{redis_server.port}/3")
    other = RedisWire(f"redis://127.0.0.1:{redis_server.port}/0")
    try:
        await wire.call("SET", "where", "db3")
        assert await wire.call("GET", "where") == b"db3"
        assert await other.call("GET", "where") is None
    finally:
        await wire.call("DEL", "where")
        await wire.close()
        await other.close()


async def test_password_from_the_url_and_a_clear_error_without_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "auth", extra_args=("--requirepass", "s3cret")).start()
    try:
        good = RedisWire(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert await good.call("PING") == b"PONG"
        await good.close()
        bad = RedisWire(f"redis://:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(RedisConnectionError, match="refused the connection"):
            await bad.call("PING")
        await bad.close()
    finally:
        server.stop()


async def test_a_restarted_server_fails_calls_in_flight_then_serves_again(tmp_path: Path) -> None:
    first = RedisServer(tmp_path / "r").start()
    again = RedisServer(tmp_path / "r", port=first.port)
    wire = RedisWire(first.url, scripts=(ECHO,))
    try:
        assert await wire.call("PING") == b"PONG"
        blocked = asyncio.ensure_future(wire.call("BLPOP", "never", 5))
        await asyncio.sleep(0.1 * SCALE)
        first.stop()
        with pytest.raises(RedisConnectionError):
            await blocked
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await wire.call("PING")
        again.start()
        assert await wire.call("PING") == b"PONG"  # made again on the next call
        assert await wire.call("SCRIPT", "EXISTS", ECHO.sha) == [1]  # and the scripts loaded again
    finally:
        await wire.close()
        first.stop()
        again.stop()


async def test_a_server_that_stops_answering_is_given_up_after_the_timeout() -> None:
    """A peer that accepts and reads but never replies: calls fail after ``timeout``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        conn, _ = await loop.sock_accept(listener)
        accepted.append(conn)

    acceptor = asyncio.ensure_future(accept())
    wire = RedisWire(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    try:
        start = time.monotonic()
        with pytest.raises(RedisConnectionError, match=r"no reply within 0\.3 s"):
            await wire.call("PING")  # the connection greeting (CLIENT SETNAME) never gets a reply
        assert 0.25 < time.monotonic() - start < 2.0
    finally:
        acceptor.cancel()
        await wire.close()
        for c in accepted:
            c.close()
        listener.close()
