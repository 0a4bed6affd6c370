"""Where the Redis master is: the address given, or the one the Sentinels name.

``--redis-sentinels HOST:PORT,...`` with ``--redis-service NAME``: every connection the
scheduler makes to Redis (the pipelined hot-path wire, the inbox wire, redis-py's
client for the cold paths and pub/sub) asks the Sentinels for the master of ``NAME``
when it connects, and checks with ``ROLE`` that the server it reached is a master. A
failover shows as a lost connection, a ``READONLY`` answer (the old master came back
as a replica) or a server that is no longer a master: the connection is dropped, the
calls on it fail as a Redis outage (``DependencyDown``: a coded answer), and the next
call connects to the master the Sentinels name then. ``--redis-url`` still gives the
password, database and TLS; its host and port are not used.

A Sentinel that does not answer is skipped (the next one is asked): losing a minority of
the Sentinels changes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError

#: Seconds a Sentinel may take to answer.
SENTINEL_TIMEOUT = 0.5


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (``[::1]:26379`` for IPv6) as pairs; ValueError when malformed."""
    out: list[tuple[str, int]] = []
    for item in (x.strip() for x in raw.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--redis-sentinels: {item!r} is not HOST:PORT")
        out.append((host, int(port)))
    if not out:
        raise ValueError("--redis-sentinels: no Sentinel address given")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SentinelConfig:
    sentinels: tuple[tuple[str, int], ...]
    service: str = "mymaster"
    #: the Sentinels' own password (``requirepass`` in sentinel.conf), if they have one
    password: str | None = None


async def _ask(host: str, port: int, command: tuple[str, ...], password: str | None) -> object:
    """One command to one Sentinel, on a short-lived connection."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), SENTINEL_TIMEOUT)
    try:
        parser = hiredis.Reader()
        commands: list[Any] = ([("AUTH", password)] if password else []) + [command]
        writer.write(b"".join(hiredis.pack_command(c) for c in commands))
        replies: list[object] = []
        async with asyncio.timeout(SENTINEL_TIMEOUT):
            while len(replies) < len(commands):
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the Sentinel closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    replies.append(reply)
        return replies[-1]
    finally:
        writer.close()


class MasterLocator:
    """Asks the Sentinels, in turn, where the master of the service is. The Sentinel that
    answered is asked first next time."""

    def __init__(self, config: SentinelConfig) -> None:
        self.config = config
        self._order = list(config.sentinels)

    async def master(self) -> tuple[str, int]:
        problems = []
        for i, (host, port) in enumerate(list(self._order)):
            try:
                reply = await _ask(
                    host,
                    port,
                    ("SENTINEL", "get-master-addr-by-name", self.config.service),
                    self.config.password,
                )
            except (OSError, TimeoutError, ConnectionError) as exc:
                problems.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            if isinstance(reply, hiredis.ReplyError):
                problems.append(f"{host}:{port}: {reply}")
                continue
            if not isinstance(reply, list) or len(reply) != 2:
                problems.append(f"{host}:{port}: does not know the service {self.config.service!r}")
                continue
            if i:
                self._order.insert(0, self._order.pop(i))
            return reply[0].decode(), int(reply[1])
        raise RedisConnectionError(
            f"no Sentinel named a master for {self.config.service!r} ({'; '.join(problems)})"
        )
