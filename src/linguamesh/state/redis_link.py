"""The connection of one scheduler instance to Redis, and the instances' inboxes.

:class:`RedisLink` holds the connections (redis-py asyncio for the cold paths, the
pipelined :class:`~.redis_wire.RedisWire` for the hot path, one more wire for
blocking inbox reads), counts every round trip by operation, and turns any
connection problem — and any error reply it does not expect: a server that cannot
take writes now (``READONLY`` after a failover, ``LOADING``, ``MASTERDOWN``, ``OOM``…)
or one it does not know — into :class:`~.base.DependencyDown`, a coded answer for
the caller, logged once per kind and minute. With Sentinels
(:mod:`~.redis_sentinel`) every connection follows the master they name. It also carries what
instances need of each other: liveness keys and the inbox streams (read with a
consumer group, acked after handling). :class:`~.redis.RedisStateStore` builds on it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..observability.logging import get_logger
from . import redis_keys as K
from .base import DependencyDown, SessionStateLost
from .redis_sentinel import MasterLocator, SentinelConfig
from .redis_wire import RedisWire, Script

log = get_logger("linguamesh.state")

#: Error replies the callers handle themselves (the inbox's consumer group).
_EXPECTED = ("BUSYGROUP", "NOGROUP")

T = TypeVar("T")


_RELEASE_INSTANCE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_PRUNE = """
-- KEYS: instances, instances:seen  ARGV: cutoff (ms), now (ms), instance key prefix, inbox prefix
-- an id whose liveness key is gone and whose last heartbeat is older than the cutoff goes, with
-- its inbox; an id never seen gets its clock started now
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then
    local seen = tonumber(redis.call('HGET', KEYS[2], id) or '')
    if not seen then
      redis.call('HSET', KEYS[2], id, ARGV[2])
    elseif seen < tonumber(ARGV[1]) then
      redis.call('SREM', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('DEL', ARGV[4] .. id)
      out[#out + 1] = id
    end
  end
end
return out
"""


def sentinel_client(url: str, sentinel: SentinelConfig, **kw: Any) -> Any:
    """redis-py's client of the master the Sentinels name (it follows a failover); the
    password, database and TLS of ``url``."""
    opts: dict[str, Any] = {k: v for k, v in parse_url(url).items() if k in ("username", "password", "db")}
    if url.startswith("rediss://"):
        opts["ssl"] = True
    sentinels = Sentinel(
        list(sentinel.sentinels),
        socket_timeout=0.5,
        sentinel_kwargs={"password": sentinel.password} if sentinel.password else {},
    )
    return sentinels.master_for(sentinel.service, redis_class=aioredis.Redis, **opts, **kw)


class RedisLink:
    def __init__(
        self,
        url: str,
        scripts: Sequence[Script],
        client: aioredis.Redis | None = None,
        sentinel: SentinelConfig | None = None,
        replicas: int = 0,
        wait_ms: int = 100,
    ) -> None:
        self.url = url
        self.sentinel = sentinel
        opts: dict[str, Any] = {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 1.0,
            "health_check_interval": 5,
        }
        # redis-py's own annotations are too loose to help here (bytes|str|Any unions)
        self.r: Any = client or (
            sentinel_client(url, sentinel, **opts) if sentinel else aioredis.Redis.from_url(url, **opts)
        )
        locator = MasterLocator(sentinel) if sentinel else None
        #: the hot path: scripts and inbox writes, pipelined over one connection; with
        #: ``replicas``, each write is confirmed on that many replicas (WAIT, ``wait_ms``)
        self.wire = RedisWire(
            url, timeout=2.0, connect_timeout=1.0, name="linguamesh", scripts=tuple(scripts),
            locator=locator, replicas=replicas, wait_ms=wait_ms,
        )  # fmt: skip
        #: blocking inbox reads, on a connection of their own
        self._inbox_wire = RedisWire(
            url, timeout=2.0, connect_timeout=1.0, name="linguamesh-inbox", locator=locator
        )
        #: when each kind of unexpected error reply was last logged
        self._logged: dict[str, float] = {}
        self.groups_made: set[str] = set()
        #: one entry per request sent to Redis (a pipeline or a script is one round trip)
        self.round_trips: dict[str, int] = {}
        #: the last request to Redis succeeded (the ``state_store_up`` gauge); requests that
        #: failed because Redis could not be reached
        self.up = True
        self.errors = 0

    async def _counted(self, op: str, pending: Awaitable[T]) -> T:
        """Await one request to Redis: counted as a round trip of ``op``, and any connection
        problem raised as :class:`DependencyDown`."""
        self.round_trips[op] = self.round_trips.get(op, 0) + 1
        try:
            out = await pending
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.up = False
            self.errors += 1
            raise DependencyDown(f"redis unreachable: {exc}") from None
        except ResponseError as exc:
            text = str(exc)
            if text.startswith("LMNOSEQ"):
                self.up = True
                raise SessionStateLost(text) from None
            if text.startswith(_EXPECTED):
                self.up = True
                raise
            # a server that cannot take writes now (redis-py's ReadOnlyError, BusyLoadingError,
            # MasterDownError, OutOfMemoryError...) or an error we do not know: the caller
            # answers with a code (dependency_down), never with silence
            kind = f"{type(exc).__name__}:{getattr(exc, 'status_code', None) or text.split(' ', 1)[0]}"
            now = time.monotonic()
            if now - self._logged.get(kind, -1e9) >= 60.0:
                self._logged[kind] = now
                log.error("redis.error_reply", op=op, kind=kind, error=text[:300])
            self.up = False
            self.errors += 1
            raise DependencyDown(f"redis answered {op} with an error: {text[:200]}") from None
        self.up = True
        return out

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        """A redis-py call (the cold paths)."""
        return await self._counted(str(getattr(fn, "__name__", "call")), fn(*args, **kw))

    async def _run(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        return await self._counted(script.name, self.wire.run(script, keys, args))

    async def _wire_call(self, wire: RedisWire, *args: Any) -> Any:
        return await self._counted(str(args[0]).lower(), wire.call(*args))

    # ------------------------------------------------------------------ instances and inboxes

    async def instance_alive(self, instance_id: str, ttl: float, token: str = "") -> None:
        """``instance_id`` is live for ``ttl`` s more; ``token``: which process holds it."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(K.instance(instance_id), token or str(time.time()), px=int(ttl * 1000))
        pipe.sadd(K.INSTANCES, instance_id)
        pipe.hset(K.INSTANCES_SEEN, instance_id, int(time.time() * 1000))
        await self._call(pipe.execute)

    async def claim_instance(self, instance_id: str, token: str, ttl: float) -> str | None:
        """Hold ``instance_id`` for this process (``token``) unless another one holds it
        live: then return that holder's token (None when claimed)."""
        ok = await self._call(self.r.set, K.instance(instance_id), token, px=int(ttl * 1000), nx=True)
        if ok:
            return None
        cur = await self._call(self.r.get, K.instance(instance_id))
        return None if cur is None or cur.decode() == token else cur.decode()

    async def release_instance(self, instance_id: str, token: str) -> None:
        """A clean stop: the id is free at once (only if this process still holds it)."""
        await self._call(self.r.eval, _RELEASE_INSTANCE, 1, K.instance(instance_id), token)

    async def prune_instances(self, older_than: float) -> list[str]:
        """Forget instances silent for ``older_than`` s (their liveness key gone): their id
        leaves the set and their inbox is deleted. Returns the ids pruned."""
        cutoff = int((time.time() - older_than) * 1000)
        now = int(time.time() * 1000)
        raw = await self._call(
            self.r.eval, _PRUNE, 2, K.INSTANCES, K.INSTANCES_SEEN, cutoff, now, K.instance(""), K.inbox("")
        )
        return [x.decode() for x in raw]

    async def live_instances(self) -> set[str]:
        ids = [x.decode() for x in await self._call(self.r.smembers, K.INSTANCES)]
        if not ids:
            return set()
        alive = await self._call(self.r.mget, [K.instance(i) for i in ids])
        return {i for i, v in zip(ids, alive, strict=True) if v is not None}

    async def send_to_instance(self, instance_id: str, message: bytes) -> None:
        await self._wire_call(
            self.wire, "XADD", K.inbox(instance_id), "MAXLEN", "~", 100_000, "*", "m", message
        )

    async def read_inbox(
        self, instance_id: str, block_ms: int, count: int = 500, ack: list[bytes] | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The next messages for ``instance_id`` (waiting up to ``block_ms``); ``ack``
        (ids of messages handled) is acknowledged in the same request."""
        key = K.inbox(instance_id)
        wire = self._inbox_wire
        wire.timeout = block_ms / 1000 + 2.0
        if key not in self.groups_made:
            try:
                # from the stream's start, not "$": a group is missing only when the stream is
                # new or Redis restarted empty, and whatever another instance wrote since then
                # (a job handed over, a node's result) is for us and unread
                await self._wire_call(wire, "XGROUP", "CREATE", key, K.INBOX_GROUP, "0", "MKSTREAM")
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self.groups_made.add(key)
            # messages delivered before a restart but never acked come first (at-least-once)
            pending = await self._wire_call(
                wire, "XREADGROUP", "GROUP", K.INBOX_GROUP, instance_id, "COUNT", count, "STREAMS", key, "0"
            )
            got = self._entries(pending)
            if got:
                return got
        read = ("XREADGROUP", "GROUP", K.INBOX_GROUP, instance_id, "COUNT", count, "BLOCK", block_ms,
                "STREAMS", key, ">")  # fmt: skip
        try:
            if ack:
                res = (
                    await self._counted(
                        "xreadgroup", wire.call_many(("XACK", key, K.INBOX_GROUP, *ack), read)
                    )
                )[-1]
            else:
                res = await self._counted("xreadgroup", wire.call(*read))
        except ResponseError as exc:
            res = exc
        if isinstance(res, ResponseError):
            if "NOGROUP" in str(res):  # Redis restarted empty: make the group again
                self.groups_made.discard(key)
                return []
            raise res
        return self._entries(res)

    @staticmethod
    def _entries(reply: Any) -> list[tuple[bytes, bytes]]:
        """``[(entry id, message)]`` from an XREADGROUP reply (entries already acked have no fields)."""
        out = []
        for _, entries in reply or []:
            for eid, fields in entries:
                if fields:  # [b"m", message] as we write them
                    out.append((eid, fields[1] if fields[0] == b"m" else fields[fields.index(b"m") + 1]))
        return out

    async def ack_inbox(self, instance_id: str, ids: list[bytes]) -> None:
        if ids:
            await self._wire_call(self.wire, "XACK", K.inbox(instance_id), K.INBOX_GROUP, *ids)

    async def server_run_id(self) -> str:
        """Changes when the Redis server restarts (then its content may be gone)."""
        info = await self._call(self.r.info, "server")
        return str(info["run_id"])

    async def config_warnings(self) -> list[str]:
        """What in the server's settings puts the shared state at risk: an eviction policy
        that may drop the scheduler's keys, and no persistence at all."""
        memory = await self._call(self.r.info, "memory")
        persistence = await self._call(self.r.info, "persistence")
        out = []
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if int(memory.get("maxmemory", 0) or 0) > 0 and policy != "noeviction":
            out.append(
                f"Redis maxmemory-policy is {policy}: at maxmemory it may evict the scheduler's keys "
                "(sessions, jobs, held results); set noeviction (new work is then refused with "
                "dependency_down instead of losing state)"
            )
        try:
            save = str((await self._call(self.r.config_get, "save")).get("save", ""))
        except DependencyDown:  # CONFIG renamed or refused: the last save tells
            save = "?" if persistence.get("rdb_last_save_time") else ""
        if not int(persistence.get("aof_enabled", 0) or 0) and not save.strip():
            out.append(
                "Redis persistence is off (no appendonly, no save): a Redis restart loses the shared "
                "state; live instances write back what they hold, but ended sessions' transcripts and "
                "usage totals are gone"
            )
        return out

    async def command_count(self) -> int:
        """Commands processed by the server so far (for round-trip accounting in the benchmark)."""
        info = await self._call(self.r.info, "stats")
        return int(info["total_commands_processed"])

    async def ping(self) -> None:
        try:
            await self._call(self.r.ping)
        except RedisError as exc:
            raise DependencyDown(str(exc)) from None

    async def close(self) -> None:
        await self.wire.close()
        await self._inbox_wire.close()
        await self.r.aclose()
