"""``RedisWire``: one Redis connection shared by every caller, with automatic pipelining.

The scheduler's hot path (accept, reserve, result release, job finish, inbox
traffic) makes a few Redis calls per job from many concurrent tasks. redis-py's
asyncio client checks a connection out of its pool, wraps each call in its
retry and observability layers and parses the reply per call; measured on the
dispatch benchmark that is ~0.14 ms of scheduler CPU per call, more than the
rest of a job's handling. This module keeps the well-kept parts — the hiredis
C reply parser and command packer — and drops the rest: every call is packed,
buffered and written once per event-loop turn together with the calls of other
tasks (one ``write`` for many commands under load), and replies are matched to
callers in order, as Redis answers a connection's commands in order.

Errors: a connection that cannot be made, breaks, or stays silent for
``timeout`` seconds with calls outstanding fails every outstanding call with
``redis.exceptions.ConnectionError`` and is made again on the next call. A
Redis error reply raises ``redis.exceptions.ResponseError`` for that call only.
Commands that block (``XREADGROUP BLOCK``) belong on a wire of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

#: Prepended to every script: its first argument is a deadline in Redis's clock (ms);
#: past it the script changes nothing and answers ``LMFENCE``. A call that timed out
#: here may still sit in the server's socket buffer (a stalled server runs it when it
#: wakes): the fence makes that late run a no-op, so a timeout always means "not done".
FENCE = """local lm_fence = tonumber(table.remove(ARGV, 1))
if lm_fence > 0 then
  local lm_t = redis.call('TIME')
  if tonumber(lm_t[1]) * 1000 + math.floor(tonumber(lm_t[2]) / 1000) > lm_fence then
    return redis.error_reply('LMFENCE the call arrived after its deadline')
  end
end
"""


class Script:
    """A Lua script run by SHA1; loaded again when Redis answers NOSCRIPT (after a restart).
    Every script is fenced (see ``FENCE``): :meth:`RedisWire.run` passes the deadline."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = FENCE + source
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class Fenced(RedisConnectionError):
    """A script reached Redis after its deadline and did nothing (a stall): a connection problem."""


class _Protocol(asyncio.Protocol):
    def __init__(self, wire: RedisWire, generation: int) -> None:
        self.wire = wire
        self.generation = generation

    def data_received(self, data: bytes) -> None:
        if self.generation == self.wire._generation:
            self.wire._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.generation == self.wire._generation:  # not a connection already given up
            self.wire._lost(exc)


class RedisWire:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        connect_timeout: float = 1.0,
        name: str = "linguamesh",
        scripts: tuple[Script, ...] = (),
    ) -> None:
        opts = parse_url(url)
        self.url = url
        self.host: str = opts.get("host", "127.0.0.1")
        self.port: int = int(opts.get("port", 6379))
        self.path: str | None = opts.get("path")
        self.db = int(opts.get("db", 0) or 0)
        self.username: str | None = opts.get("username")
        self.password: str | None = opts.get("password")
        self.ssl = url.startswith("rediss://")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.name = name
        self.scripts = scripts
        self._transport: asyncio.Transport | None = None
        self._reader: Any = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._progress = 0.0  # monotonic time of the last reply (or of the first outstanding call)
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self._generation = 0
        #: Redis's clock minus ours (ms), measured on connect (scripts' deadlines are in Redis's clock)
        self.clock_offset_ms = 0.0
        #: a script must start within this many seconds of being sent, else it does nothing
        self.fence = timeout * 0.75
        #: commands sent, and writes they took (several commands share a write under load)
        self.commands = 0
        self.writes = 0

    # ------------------------------------------------------------------ calls

    async def call(self, *args: Any) -> Any:
        """Send one command; return its reply (bytes, int, list, None)."""
        reply = await self._send(hiredis.pack_command(args))
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def call_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send several commands in one write; error replies are returned as ``ResponseError`` values."""
        if self._transport is None:
            await self._connect()
        futs = [self._queue(hiredis.pack_command(c)) for c in commands]
        replies = [await f for f in futs]
        return [ResponseError(str(r)) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    async def transaction(self, *commands: tuple[Any, ...]) -> list[Any]:
        """``MULTI`` … ``EXEC`` in one write; returns the commands' replies."""
        replies = await self.call_many(("MULTI",), *commands, ("EXEC",))
        result = replies[-1]
        if isinstance(result, ResponseError):
            raise result
        return [ResponseError(str(r)) if isinstance(r, hiredis.ReplyError) else r for r in result]

    async def run(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """Run a script by SHA; on NOSCRIPT (after ``SCRIPT FLUSH``) send its source instead.
        It must start within ``fence`` seconds (in Redis's clock), or it does nothing and
        raises :class:`Fenced`."""
        if self._transport is None:
            await self._connect()
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, self._deadline(), *args)
        except ResponseError as exc:
            if str(exc).startswith("LMFENCE"):
                raise Fenced(str(exc)) from None
            if not str(exc).startswith("NOSCRIPT"):
                raise
        try:
            return await self.call("EVAL", script.source, len(keys), *keys, self._deadline(), *args)
        except ResponseError as exc:
            if str(exc).startswith("LMFENCE"):
                raise Fenced(str(exc)) from None
            raise

    def _deadline(self) -> int:
        return int(time.time() * 1000 + self.clock_offset_ms + self.fence * 1000)

    # ------------------------------------------------------------------ plumbing

    async def _send(self, packed: bytes) -> Any:
        if self._transport is None:
            await self._connect()
        return await self._queue(packed)

    def _queue(self, packed: bytes) -> asyncio.Future[Any]:
        if self._transport is None:
            raise RedisConnectionError(f"connection to {self._where()} lost")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._waiting:
            self._progress = time.monotonic()
        self._waiting.append(fut)
        self._out.append(packed)
        self.commands += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is not None and self._out:
            self.writes += 1
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            reply = self._reader.gets()
            if reply is False:
                break
            if not waiting:  # a reply nobody waits for: the stream is out of step
                self._abort("unexpected reply")
                return
            fut = waiting.popleft()
            if not fut.done():
                fut.set_result(reply)
        self._progress = time.monotonic()

    def _lost(self, exc: Exception | None) -> None:
        self._generation += 1
        self._transport = None
        self._out.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        err = RedisConnectionError(f"connection to {self._where()} lost" + (f": {exc}" if exc else ""))
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(err)

    def _abort(self, why: str) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()  # connection_lost follows and fails the waiting calls
        self._lost(RedisConnectionError(why))

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        if self._waiting and time.monotonic() - self._progress > self.timeout:
            self._abort(f"no reply within {self.timeout:g} s")
            return
        if self._transport is not None:
            self._watchdog = loop.call_later(max(self.timeout / 4, 0.05), self._watch)

    def _where(self) -> str:
        return self.path or f"{self.host}:{self.port}"

    async def _connect(self) -> None:
        """Connect once for every caller waiting (they all go on in the same loop turn)."""
        if self._closed:
            raise RedisConnectionError("wire closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        await asyncio.shield(self._connecting)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        gen = self._generation
        try:
            if self.path:
                coro = loop.create_unix_connection(lambda: _Protocol(self, gen), self.path)
            else:
                ctx = ssl.create_default_context() if self.ssl else None
                coro = loop.create_connection(lambda: _Protocol(self, gen), self.host, self.port, ssl=ctx)
            transport, _ = await asyncio.wait_for(coro, self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to {self._where()}: {exc}") from None
        self._reader = hiredis.Reader()
        self._transport = transport
        self._watchdog = loop.call_later(max(self.timeout / 4, 0.05), self._watch)
        hello: list[tuple[Any, ...]] = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            hello.append(("AUTH", *auth))
        if self.db:
            hello.append(("SELECT", self.db))
        hello.append(("CLIENT", "SETNAME", self.name))
        # loaded on every connect: a new connection may be to a restarted server
        hello += [("SCRIPT", "LOAD", s.source) for s in self.scripts]
        hello.append(("TIME",))
        sent = time.time() * 1000
        futs = [self._queue(hiredis.pack_command(c)) for c in hello]
        for f in futs:
            reply = await f
            if isinstance(reply, hiredis.ReplyError):
                self._abort(str(reply))
                raise RedisConnectionError(f"{self._where()} refused the connection: {reply}")
        # the server's clock at the midpoint of the round trip (a restarted or another server
        # may have another clock: measured on every connect)
        now = time.time() * 1000
        seconds, micros = (int(x) for x in reply)
        self.clock_offset_ms = seconds * 1000 + micros / 1000 - (sent + now) / 2

    async def close(self) -> None:
        self._closed = True
        transport = self._transport
        self._lost(None)
        if transport is not None:
            transport.close()
