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
``redis.exceptions.ConnectionError`` and is made again on the next call. An answer
that says the server cannot take writes now (``READONLY``: a master demoted to a
replica; ``MASTERDOWN``, ``LOADING``, ``MISCONF``, ``NOREPLICAS``, ``TRYAGAIN``)
does the same: the server is not the master we need. Any other Redis error reply
raises ``redis.exceptions.ResponseError`` for that call only. Commands that block
(``XREADGROUP BLOCK``) belong on a wire of their own.

With a :class:`~.redis_sentinel.MasterLocator` the wire asks the Sentinels where the
master is on every connect and checks with ``ROLE`` that it reached one.

Replica confirmation (``replicas`` > 0): each batch written is followed by ``WAIT
replicas wait_ms``, and no call of the batch is answered before the ``WAIT`` is: a
write the scheduler acts on is on a replica (group commit: one ``WAIT`` per write, not
per call). A ``WAIT`` that times out (no replica confirmed within ``wait_ms``) still
answers the calls: the service goes on unreplicated while its replicas are away (after
a failover the new master has none until the old one rejoins), and counts it
(``unreplicated``). Then no ``WAIT`` is sent — each would stall the connection for
``wait_ms`` — until a ``ROLE`` probe (every :data:`REPLICA_PROBE` seconds, in a batch)
shows enough replicas connected again.
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

from .redis_sentinel import MasterLocator

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


class NotMaster(RedisConnectionError):
    """The server cannot take our writes now (a replica, loading, no master): an outage."""


#: Error replies that mean "this server cannot serve us now", not "this call is wrong".
OUTAGE_REPLIES = ("READONLY", "MASTERDOWN", "LOADING", "MISCONF", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN")


def outage(reply: object) -> bool:
    return str(reply).startswith(OUTAGE_REPLIES)


class _WaitMark:
    """The end of a batch among the replies: its ``WAIT``, a ``ROLE`` probe, or (``kind``
    "end", no command) nothing to wait for."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


_WAIT_MARK = _WaitMark("wait")
_PROBE_MARK = _WaitMark("probe")
_END_MARK = _WaitMark("end")
#: Seconds between ROLE probes while no replica confirms writes.
REPLICA_PROBE = 1.0


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
        locator: MasterLocator | None = None,
        replicas: int = 0,
        wait_ms: int = 100,
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
        self.locator = locator
        self.replicas = replicas
        self.wait_ms = wait_ms
        #: batches whose WAIT timed out (no replica confirmed), and the last WAIT's count
        self.unreplicated = 0
        self.confirmed_by = 0
        #: replicas are away: no WAIT until a ROLE probe (due at ``_probe_at``) finds them
        self.replicas_away = False
        self._probe_at = 0.0
        self._transport: asyncio.Transport | None = None
        self._reader: Any = None
        self._waiting: deque[asyncio.Future[Any] | _WaitMark] = deque()
        #: replies that arrived for the current batch, answered at its WAIT
        self._held: list[tuple[asyncio.Future[Any], Any]] = []
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
            if outage(reply):
                self._abort(str(reply))
                raise NotMaster(f"{self._where()}: {reply}")
            raise ResponseError(str(reply))
        return reply

    async def call_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send several commands in one write; error replies are returned as ``ResponseError`` values."""
        if self._transport is None:
            await self._connect()
        futs = [self._queue(hiredis.pack_command(c)) for c in commands]
        replies = [await f for f in futs]
        for r in replies:
            if isinstance(r, hiredis.ReplyError) and outage(r):
                self._abort(str(r))
                raise NotMaster(f"{self._where()}: {r}")
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
        transport = self._transport
        if transport is not None and self._out and not transport.is_closing():
            if self.replicas > 0 and not self.replicas_away:  # answered once a replica has it
                wait: Any = ("WAIT", self.replicas, self.wait_ms)
                self._out.append(hiredis.pack_command(wait))
                self._waiting.append(_WAIT_MARK)
            elif self.replicas > 0 and time.monotonic() >= self._probe_at:  # are they back?
                self._probe_at = time.monotonic() + REPLICA_PROBE
                role: Any = ("ROLE",)
                self._out.append(hiredis.pack_command(role))
                self._waiting.append(_PROBE_MARK)
            elif self.replicas > 0:  # the batch's replies are answered as they come
                self._waiting.append(_END_MARK)
            self.writes += 1
            transport.write(b"".join(self._out))
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
            if isinstance(fut, _WaitMark):  # the batch is on a replica (or the wait is over)
                if fut.kind == "probe":  # ROLE of a master: [b"master", offset, [[ip, port, offset], ...]]
                    connected = len(reply[2]) if isinstance(reply, list) and len(reply) > 2 else 0
                    self.replicas_away = connected < self.replicas
                    if self.replicas_away:
                        self.unreplicated += 1
                else:
                    self.confirmed_by = reply if isinstance(reply, int) else 0
                    if self.confirmed_by < self.replicas:
                        self.unreplicated += 1
                        self.replicas_away = True
                        self._probe_at = time.monotonic() + REPLICA_PROBE
                held, self._held = self._held, []
                for f, r in held:
                    if not f.done():
                        f.set_result(r)
            elif self.replicas > 0:
                self._held.append((fut, reply))
                if waiting and waiting[0] is _END_MARK:  # the last reply of a batch with no WAIT
                    waiting.popleft()
                    held, self._held = self._held, []
                    for f, r in held:
                        if not f.done():
                            f.set_result(r)
            elif not fut.done():
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
        # (a reply held for its batch's WAIT was not confirmed on a replica: not answered)
        held, self._held = [f for f, _ in self._held], []
        while self._waiting:
            fut = self._waiting.popleft()
            if not isinstance(fut, _WaitMark):
                held.append(fut)
        for fut in held:
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
            # its failure is every waiting caller's (each raises it); retrieved here so a
            # connect nobody waits for any more (cancelled callers) logs nothing
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(self._connecting)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        gen = self._generation
        if self.locator is not None:  # the master the Sentinels name now
            self.host, self.port = await self.locator.master()
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
        if self.locator is not None:
            hello.append(("ROLE",))
        # loaded on every connect: a new connection may be to a restarted server
        hello += [("SCRIPT", "LOAD", s.source) for s in self.scripts]
        hello.append(("TIME",))
        sent = time.time() * 1000
        futs = [self._queue(hiredis.pack_command(c)) for c in hello]
        for c, f in zip(hello, futs, strict=True):
            reply = await f
            if isinstance(reply, hiredis.ReplyError):
                self._abort(str(reply))
                raise RedisConnectionError(f"{self._where()} refused the connection: {reply}")
            if c[0] == "ROLE" and reply[0] != b"master":  # the Sentinels' news is older than the switch
                self._abort("not a master")
                raise NotMaster(f"{self._where()} is a {reply[0].decode()}, not the master")
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
