"""``RedisStateStore``: the shared state of many scheduler instances (DESIGN §5).

Multi-key changes are one Lua script each, loaded on connect and run by SHA over
the pipelined :class:`~.redis_wire.RedisWire` (the hot path; redis-py asyncio
serves the cold paths): slot reservation with the job record and its hand-over,
event append (numbering) and ordered result release with the job's end and the
holder's notice, owner-guarded job writes, takeover claims. Key names are in
``redis_keys``. Selection reads a local mirror of the node registry (kept
current on every local change, on notices from other instances and by a
periodic sync), so sampling candidates costs no round trip; the reserve
script has the final word on capacity.

Any connection problem becomes :class:`DependencyDown`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.history import ReplayGap
from ..core.ids import JobId, NodeId, SessionId
from ..core.nodes import NodeCapabilities, NodeView
from . import redis_keys as K
from .base import DependencyDown, Handover, JobEnd, JobRecord, Notify, SessionRecord
from .memory import MemoryNodeIndex
from .redis_wire import RedisWire, Script

T = TypeVar("T")

RESERVE = """
-- KEYS: slots, node[, job, jobs:active[, new owner's inbox]]
-- ARGV: member, ttl_ms[, expected owner, state, attempt, node, deadline_ms, job_id, new owner
--       [, hand-over message (an inbox entry, written as given)]]
-- returns {reserved, slots in use, handed over (the message was written)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(redis.call('HGET', KEYS[2], 'max'))
if not max then return {0, -1, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return {1, redis.call('ZCARD', KEYS[1]), 0}
end
local used = redis.call('ZCARD', KEYS[1])
if used >= max then return {0, used, 0} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local handed = 0
if KEYS[3] then
  local cur = redis.call('HGET', KEYS[3], 'owner')
  if (not cur) or cur == ARGV[3] then
    redis.call('HSET', KEYS[3], 'owner', ARGV[9], 'state', ARGV[4], 'attempt', ARGV[5], 'node', ARGV[6],
               'deadline', ARGV[7])
    redis.call('ZADD', KEYS[4], ARGV[7], ARGV[8])
    if KEYS[5] then
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', 100000, '*', 'm', ARGV[10])
      handed = 1
    end
  end
end
return {1, used + 1, handed}
"""

RELEASE = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
return {n, redis.call('ZCARD', KEYS[1])}
"""

# shared by APPEND and APPEND_PUSH: number one event and add it to the history
_APPEND_ONE = """
local function append(hist, seqkey, maxlen, p, out)
  local seq = redis.call('INCR', seqkey)
  local e = string.find(p, '"', 10, true)
  local data = string.sub(p, 1, e) .. ',"seq":' .. seq .. string.sub(p, e + 1)
  redis.call('XADD', hist, 'MAXLEN', maxlen, seq .. '-0', 'd', data)
  out[#out + 1] = seq
  out[#out + 1] = data
end
"""

# shared by APPEND and APPEND_PUSH: tell the session's holder about the events just
# appended (out[first..]: seq, data, ...), carrying them; an inbox entry as cluster.py
# writes them (a MessagePack array of messages). Returns 1 when a message was written.
_NOTIFY = """
local function notify(inbox, id, sender, sid, out, first)
  if id == '' or #out < first then return 0 end
  local e = {}
  for i = first, #out, 2 do e[#e + 1] = {out[i], out[i + 1]} end
  local m = cmsgpack.pack({{k = 'session', i = id, o = sender, s = sid, q = out[#out - 1], e = e}})
  redis.call('XADD', inbox, 'MAXLEN', '~', 100000, '*', 'm', m)
  return 1
end
"""

APPEND = (
    _APPEND_ONE
    + _NOTIFY
    + """
-- KEYS: history, seqno, holder's inbox ('' = none)
-- ARGV: maxlen, ttl, message id ('' = no notice), sender, session id, event payloads...
-- returns {notified (1|0), seq, data, seq, data...}
local out = {0}
for i = 6, #ARGV do append(KEYS[1], KEYS[2], ARGV[1], ARGV[i], out) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
out[1] = notify(KEYS[3], ARGV[3], ARGV[4], ARGV[5], out, 2)
return out
"""
)

# shared by FINISH_JOB and APPEND_PUSH: end a job record (if ``owner`` owns it) and
# release its slot; returns the node's slots in use after it (-1: no slot released)
_FINISH_ONE = """
local function finish(job, active, slots, owner, job_id, ttl, member)
  local used = -1
  if member ~= '' then
    redis.call('ZREM', slots, member)
    used = redis.call('ZCARD', slots)
  end
  if redis.call('HGET', job, 'owner') == owner then
    redis.call('ZREM', active, job_id)
    redis.call('HSET', job, 'state', 'ended')
    redis.call('HDEL', job, 'data')
    redis.call('EXPIRE', job, ttl)
  end
  return used
end
"""

APPEND_PUSH = (
    _APPEND_ONE
    + _FINISH_ONE
    + _NOTIFY
    + """
-- KEYS: pending, done, history, seqno, job, jobs:active, slots, holder's inbox ('' = unused)
-- ARGV: maxlen, ttl, index, result, owner ('' = no job to end), job_id, job ttl,
--       slot member ('' = none), message id ('' = no notice), sender, session id,
--       event payloads...
-- the job ends first, then the events are appended, then the result goes through the
-- ordering buffer, then the holder is told;
-- returns {expected (1|0), slots in use, notified (1|0), seq, data, seq, data...}
local out = {1, -1, 0}
if ARGV[5] ~= '' then out[2] = finish(KEYS[5], KEYS[6], KEYS[7], ARGV[5], ARGV[6], ARGV[7], ARGV[8]) end
for i = 12, #ARGV do append(KEYS[3], KEYS[4], ARGV[1], ARGV[i], out) end
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  out[1] = 0
else
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  while true do
    local first = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
    if not first then break end
    local p = redis.call('HGET', KEYS[2], first)
    if not p then break end
    redis.call('ZREM', KEYS[1], first)
    redis.call('HDEL', KEYS[2], first)
    append(KEYS[3], KEYS[4], ARGV[1], p, out)
  end
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
out[3] = notify(KEYS[8], ARGV[9], ARGV[10], ARGV[11], out, 4)
return out
"""
)

SAVE_JOB = """
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur and cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', ARGV[2], 'attempt', ARGV[3], 'node', ARGV[4], 'deadline', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'data', ARGV[6]) end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[7])
return 1
"""

FINISH_JOB = (
    _FINISH_ONE
    + """
-- KEYS: job, jobs:active[, slots]  ARGV: owner, job_id, ttl, slot member ('' = none)
return finish(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local live = {}
for i = 5, #ARGV do live[ARGV[i]] = true end
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. id
  local owner = redis.call('HGET', key, 'owner')
  if not owner then
    redis.call('ZREM', KEYS[1], id)
  elseif not live[owner] then
    redis.call('HSET', key, 'owner', ARGV[1])
    out[#out + 1] = id
  end
end
return out
"""

ACCEPT = """
local idx, rid, n, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('HEXISTS', KEYS[1], 'u:' .. idx) == 1 then return 'index' end
if rid ~= '' and redis.call('HEXISTS', KEYS[1], 'r:' .. rid) == 1 then return 'request' end
local first = ARGV[5] or ''
redis.call('HSET', KEYS[1], 'u:' .. idx, first)
if rid ~= '' then redis.call('HSET', KEYS[1], 'r:' .. rid, first) end
redis.call('EXPIRE', KEYS[1], 86400)
local cur = tonumber(redis.call('HGET', KEYS[2], 'max_index') or '-1')
if tonumber(idx) > cur then redis.call('HSET', KEYS[2], 'max_index', idx) end
local ntgt = #KEYS - 3 - n
for i = 1, ntgt do
  redis.call('ZADD', KEYS[3 + i], idx, idx)
  redis.call('EXPIRE', KEYS[3 + i], 3600)
end
for j = 0, n - 1 do
  local a = 5 + j * 6
  local key = KEYS[3 + ntgt + 1 + j]
  redis.call('HSET', key, 'owner', ARGV[a + 1], 'state', ARGV[a + 2], 'attempt', ARGV[a + 3], 'node', '',
             'deadline', ARGV[a + 4], 'data', ARGV[a + 5])
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', KEYS[3], ARGV[a + 4], ARGV[a])
end
return false
"""

CLAIM_ONE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return false end
for i = 2, #ARGV do if owner == ARGV[i] then return false end end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return 1
"""

CLAIM_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local prev = redis.call('HGET', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return prev
"""


_encode = msgspec.json.Encoder()


def _json(data: dict[str, Any]) -> bytes:
    return _encode.encode(data)


def _caps_json(c: NodeCapabilities) -> str:
    return json.dumps(
        {"asr": sorted(c.asr), "repair": sorted(c.repair), "nmt": sorted(c.nmt), "tts": sorted(c.tts)}
    )


def _caps_from(raw: str) -> NodeCapabilities:
    d = json.loads(raw)
    return NodeCapabilities(
        asr=frozenset(d["asr"]),
        repair=frozenset(d["repair"]),
        nmt=frozenset((a, b) for a, b in d["nmt"]),
        tts=frozenset(d["tts"]),
    )


class RedisStateStore:
    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        node_stale_after: float = 15.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = url
        # redis-py's own annotations are too loose to help here (bytes|str|Any unions)
        self.r: Any = client or aioredis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=1.0, health_check_interval=5
        )
        self.history_size = history_size
        self.node_stale_after = node_stale_after
        self.index = MemoryNodeIndex()
        self.owners: dict[NodeId, str] = {}
        self._reserve = Script("reserve", RESERVE)
        self._release = Script("release", RELEASE)
        self._append = Script("append", APPEND)
        self._append_push = Script("push_result", APPEND_PUSH)
        self._save_job = Script("save_job", SAVE_JOB)
        self._finish_job = Script("finish_job", FINISH_JOB)
        self._claim = Script("claim", CLAIM)
        self._claim_session = Script("claim_session", CLAIM_SESSION)
        self._accept = Script("accept_utterance", ACCEPT)
        self._claim_one = Script("claim_job", CLAIM_ONE)
        scripts = (self._reserve, self._release, self._append, self._append_push, self._save_job,
                   self._finish_job, self._claim, self._claim_session, self._accept, self._claim_one)  # fmt: skip
        #: the hot path: scripts and inbox writes, pipelined over one connection
        self.wire = RedisWire(url, timeout=2.0, connect_timeout=1.0, name="linguamesh", scripts=scripts)
        #: blocking inbox reads, on a connection of their own
        self._inbox_wire = RedisWire(url, timeout=2.0, connect_timeout=1.0, name="linguamesh-inbox")
        self.groups_made: set[str] = set()
        #: one entry per request sent to Redis (a pipeline or a script is one round trip)
        self.round_trips: dict[str, int] = {}

    async def _counted(self, op: str, pending: Awaitable[T]) -> T:
        """Await one request to Redis: counted as a round trip of ``op``, and any connection
        problem raised as :class:`DependencyDown`."""
        self.round_trips[op] = self.round_trips.get(op, 0) + 1
        try:
            return await pending
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise DependencyDown(f"redis unreachable: {exc}") from None

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        """A redis-py call (the cold paths)."""
        return await self._counted(str(getattr(fn, "__name__", "call")), fn(*args, **kw))

    async def _run(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        return await self._counted(script.name, self.wire.run(script, keys, args))

    async def _wire_call(self, wire: RedisWire, *args: Any) -> Any:
        return await self._counted(str(args[0]).lower(), wire.call(*args))

    # ------------------------------------------------------------------ nodes

    async def register_node(self, node: NodeView, owner: str) -> None:
        now_ms = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=True)
        old = self.index.get(node.node_id)
        if old is not None and old.pool != node.pool:
            pipe.srem(K.pool_members(old.pool), node.node_id)
        pipe.hset(
            K.node(node.node_id),
            mapping={
                "caps": _caps_json(node.capabilities),
                "max": node.max_concurrent_jobs,
                "owner": owner,
                "pool": node.pool,
                "hb": now_ms,
                "running": node.running_jobs,
            },
        )
        pipe.sadd(K.NODES, node.node_id)
        pipe.sadd(K.pool_members(node.pool), node.node_id)
        pipe.zcard(K.slots(node.node_id))
        res = await self._call(pipe.execute)
        node.reserved = int(res[-1])
        self.owners[node.node_id] = owner
        self.index.put(node)

    async def remove_node(self, node_id: NodeId, owner: str | None = None) -> None:
        if owner is not None:
            current = await self._call(self.r.hget, K.node(node_id), "owner")
            if current is not None and current.decode() != owner:
                return  # the node already re-registered with another instance
        view = self.index.drop(node_id)
        self.owners.pop(node_id, None)
        pipe = self.r.pipeline(transaction=True)
        pipe.srem(K.NODES, node_id)
        if view is not None:
            pipe.srem(K.pool_members(view.pool), node_id)
        pipe.delete(K.node(node_id))
        await self._call(pipe.execute)

    async def heartbeat(self, node_id: NodeId, running_jobs: int, now: float) -> None:
        await self._call(
            self.r.hset, K.node(node_id), mapping={"hb": int(time.time() * 1000), "running": running_jobs}
        )
        view = self.index.get(node_id)
        if view is not None:
            view.running_jobs = running_jobs

    def nodes(self) -> MemoryNodeIndex:
        return self.index

    def node_owner(self, node_id: NodeId) -> str | None:
        return self.owners.get(node_id)

    async def refresh_node(self, node_id: NodeId, live: set[str] | None = None) -> None:
        """Re-read one node from Redis into the local mirror (after a notice from another instance)."""
        raw = await self._call(self.r.hgetall, K.node(node_id))
        self._mirror(node_id, raw, live)

    async def sync_nodes(self, live: set[str]) -> None:
        """Re-read the whole registry into the local mirror; nodes of dead instances go offline."""
        ids = [x.decode() for x in await self._call(self.r.smembers, K.NODES)]
        pipe = self.r.pipeline(transaction=False)
        for nid in ids:
            pipe.hgetall(K.node(nid))
            pipe.zcard(K.slots(nid))
        res = await self._call(pipe.execute)
        seen = set()
        for i, nid in enumerate(ids):
            raw, used = res[2 * i], res[2 * i + 1]
            seen.add(nid)
            self._mirror(NodeId(nid), raw, live, used)
        for nid in [n for n in self.index.views if n not in seen]:
            self.index.drop(nid)
            self.owners.pop(nid, None)

    def _mirror(
        self, node_id: NodeId, raw: dict[bytes, bytes], live: set[str] | None, used: int | None = None
    ) -> None:
        if not raw:
            self.index.drop(node_id)
            self.owners.pop(node_id, None)
            return
        d = {k.decode(): v.decode() for k, v in raw.items()}
        owner = d["owner"]
        stale = time.time() * 1000 - int(d.get("hb", "0")) > self.node_stale_after * 1000
        online = not stale and (live is None or owner in live)
        old = self.index.get(node_id)
        caps = _caps_from(d["caps"])
        if old is not None and old.capabilities == caps and old.max_concurrent_jobs == int(d["max"]):
            old.online = online
            old.running_jobs = int(d.get("running", "0"))
            if used is not None:
                old.reserved = used
            self.owners[node_id] = owner
            self.index.refresh(node_id)
            return
        view = NodeView(node_id, caps, int(d["max"]), reserved=used or 0, online=online)
        view.running_jobs = int(d.get("running", "0"))
        self.owners[node_id] = owner
        self.index.put(view)

    # ------------------------------------------------------------------ reservations

    async def reserve(
        self,
        node_id: NodeId,
        job_id: JobId,
        attempt_id: int,
        ttl: float,
        record: JobRecord | None = None,
        handover: Handover | None = None,
    ) -> bool:
        keys = [K.slots(node_id), K.node(node_id)]
        args: list[Any] = [f"{job_id}:{attempt_id}", int(ttl * 1000)]
        if record is not None:
            keys += [K.job(job_id), K.JOBS_ACTIVE]
            new_owner = handover.to_instance if handover is not None else record.owner
            args += [record.owner, record.state, record.attempt_id, record.node_id or "",
                     int(record.deadline * 1000), job_id, new_owner]  # fmt: skip
            if handover is not None:
                keys.append(K.inbox(handover.to_instance))
                args.append(handover.message)
        ok, used, handed = await self._run(self._reserve, keys=keys, args=args)
        self._reserved(node_id, int(used))
        if handover is not None:
            handover.sent = bool(handed)
        return bool(ok)

    async def release(self, node_id: NodeId, job_id: JobId, attempt_id: int) -> bool:
        n, used = await self._run(self._release, keys=[K.slots(node_id)], args=[f"{job_id}:{attempt_id}"])
        self._reserved(node_id, int(used))
        return bool(n)

    # ------------------------------------------------------------------ idempotency

    async def bind_request(self, session_id: SessionId, key: str, job_id: JobId) -> JobId | None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hsetnx(K.requests(session_id), key, job_id)
        pipe.hget(K.requests(session_id), key)
        pipe.expire(K.requests(session_id), 86400)
        created, value, _ = await self._call(pipe.execute)
        return None if created else JobId(value.decode())

    async def accept_utterance(
        self,
        session_id: SessionId,
        index: int,
        request_id: str | None,
        jobs: list[JobRecord],
        tgt_langs: list[str],
    ) -> str | None:
        keys = [K.requests(session_id), K.session(session_id), K.JOBS_ACTIVE]
        keys += [K.pending(session_id, t) for t in tgt_langs]
        keys += [K.job(r.job_id) for r in jobs]
        args: list[Any] = [index, request_id or "", len(jobs), 3600]
        for r in jobs:
            args += [r.job_id, r.owner, r.state, r.attempt_id, int(r.deadline * 1000), _json(r.data)]
        res = await self._run(self._accept, keys=keys, args=args)
        return res.decode() if res else None

    async def claim_job(self, job_id: str, owner: str, live: set[str]) -> bool:
        """Take over one job whose owner is not live (a result for it arrived here)."""
        return bool(await self._run(self._claim_one, keys=[K.job(job_id)], args=[owner, *sorted(live)]))

    async def lookup_request(self, session_id: SessionId, key: str) -> JobId | None:
        v = await self._call(self.r.hget, K.requests(session_id), key)
        return JobId(v.decode()) if v is not None else None

    # ------------------------------------------------------------------ sessions

    async def create_session(self, record: SessionRecord, ttl: float) -> None:
        pipe = self.r.pipeline(transaction=True)
        key = K.session(record.session_id)
        pipe.hset(
            key,
            mapping={
                "trace_id": record.trace_id,
                "resume_token": record.resume_token,
                "view_token": record.view_token,
                "settings": json.dumps(record.settings),
                "owner": record.owner,
                "max_index": record.max_index,
            },
        )
        pipe.expire(key, int(ttl))
        await self._call(pipe.execute)

    async def load_session(self, session_id: SessionId) -> SessionRecord | None:
        raw = await self._call(self.r.hgetall, K.session(session_id))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return SessionRecord(
            session_id=session_id,
            trace_id=d["trace_id"],
            resume_token=d["resume_token"],
            view_token=d["view_token"],
            settings=json.loads(d["settings"]),
            owner=d["owner"],
            max_index=int(d.get("max_index", "-1")),
        )

    async def claim_session(self, session_id: SessionId, owner: str, ttl: float) -> str | None:
        prev = await self._run(self._claim_session, keys=[K.session(session_id)], args=[owner, int(ttl)])
        return prev.decode() if prev else None

    async def session_owner(self, session_id: SessionId) -> str | None:
        v = await self._call(self.r.hget, K.session(session_id), "owner")
        return v.decode() if v is not None else None

    async def touch_session(self, session_id: SessionId, ttl: float) -> None:
        await self._call(self.r.expire, K.session(session_id), int(ttl))

    async def set_max_index(self, session_id: SessionId, index: int) -> None:
        await self._call(self.r.hset, K.session(session_id), "max_index", index)

    # ------------------------------------------------------------------ session events

    def _ttl(self) -> int:
        return 3600

    @staticmethod
    def _pairs(flat: list[Any]) -> list[tuple[int, bytes]]:
        return [(int(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def append_events(
        self, session_id: SessionId, payloads: list[bytes], notify: Notify | None = None
    ) -> list[tuple[int, bytes]]:
        inbox, note = self._notice(session_id, notify)
        flat = await self._run(
            self._append,
            keys=[K.history(session_id), K.seqno(session_id), inbox],
            args=[self.history_size, self._ttl(), *note, *payloads],
        )
        if notify is not None:
            notify.sent = bool(flat[0])
        return self._pairs(flat[1:])

    @staticmethod
    def _notice(session_id: SessionId, notify: Notify | None) -> tuple[str, list[str]]:
        if notify is None:
            return "", ["", "", ""]
        return K.inbox(notify.to_instance), [notify.message_id, notify.sender, session_id]

    async def expect_result(self, session_id: SessionId, tgt_lang: str, index: int) -> None:
        key = K.pending(session_id, tgt_lang)
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(key, {str(index): index})
        pipe.expire(key, self._ttl())
        await self._call(pipe.execute)

    async def push_result(
        self,
        session_id: SessionId,
        tgt_lang: str,
        index: int,
        payload: bytes,
        end: JobEnd | None = None,
        notify: Notify | None = None,
    ) -> list[tuple[int, bytes]]:
        return await self.append_and_push(session_id, [], tgt_lang, index, payload, end, notify)

    async def append_and_push(
        self,
        session_id: SessionId,
        payloads: list[bytes],
        tgt_lang: str,
        index: int,
        result: bytes,
        end: JobEnd | None = None,
        notify: Notify | None = None,
    ) -> list[tuple[int, bytes]]:
        inbox, note = self._notice(session_id, notify)
        keys = [K.pending(session_id, tgt_lang), K.done(session_id, tgt_lang), K.history(session_id),
                K.seqno(session_id), "", "", "", inbox]  # fmt: skip
        args: list[Any] = [self.history_size, self._ttl(), index, result, "", "", 0, "", *note]
        if end is not None:
            keys[4:6] = [K.job(end.job_id), K.JOBS_ACTIVE]
            args[4:7] = [end.owner, end.job_id, 600]
            if end.release is not None:
                keys[6] = K.slots(end.release[0])
                args[7] = f"{end.job_id}:{end.release[1]}"
        flat = await self._run(self._append_push, keys=keys, args=[*args, *payloads])
        if end is not None and end.release is not None:
            self._reserved(end.release[0], int(flat[1]))
        if notify is not None:
            notify.sent = bool(flat[2])
        if not flat[0]:  # the appended events stand; the caller re-sends the result
            raise KeyError(f"index {index} was not expected or already completed")
        return self._pairs(flat[3:])

    async def events_since(self, session_id: SessionId, last_seq: int) -> list[tuple[int, bytes]]:
        pipe = self.r.pipeline(transaction=True)
        pipe.get(K.seqno(session_id))
        pipe.xrange(K.history(session_id), min=f"({last_seq}-0", max="+")
        pipe.xrange(K.history(session_id), min="-", max="+", count=1)
        cur, entries, first = await self._call(pipe.execute)
        current = int(cur) if cur else 0
        if last_seq > current:
            raise ReplayGap(f"last_seq {last_seq} is ahead of the session ({current})")
        out = [(int(eid.split(b"-")[0]), fields[b"d"]) for eid, fields in entries]
        oldest = int(first[0][0].split(b"-")[0]) if first else current + 1
        if last_seq + 1 < oldest:
            raise ReplayGap(f"events {last_seq + 1}..{oldest - 1} are no longer kept")
        return out

    async def last_seq(self, session_id: SessionId) -> int:
        v = await self._call(self.r.get, K.seqno(session_id))
        return int(v) if v else 0

    async def ack_events(self, session_id: SessionId, seq: int) -> None:
        await self._call(self.r.xtrim, K.history(session_id), minid=f"{seq + 1}-0", approximate=False)

    async def drop_session(self, session_id: SessionId) -> None:
        rec = await self.load_session(session_id)
        keys = [K.session(session_id), K.seqno(session_id), K.history(session_id), K.requests(session_id)]
        if rec is not None:
            for tgt in rec.settings.get("tgt_langs", []):
                keys += [K.pending(session_id, tgt), K.done(session_id, tgt)]
        await self._call(self.r.delete, *keys)

    # ------------------------------------------------------------------ jobs

    async def save_job(self, record: JobRecord) -> bool:
        data = _json(record.data) if record.data else ""
        ok = await self._run(
            self._save_job,
            keys=[K.job(record.job_id), K.JOBS_ACTIVE],
            args=[
                record.owner,
                record.state,
                record.attempt_id,
                record.node_id or "",
                int(record.deadline * 1000),
                data,
                3600,
                record.job_id,
            ],
        )
        return bool(ok)

    async def load_job(self, job_id: JobId) -> JobRecord | None:
        raw = await self._call(self.r.hgetall, K.job(job_id))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return JobRecord(
            job_id=job_id,
            owner=d["owner"],
            state=d.get("state", ""),
            attempt_id=int(d.get("attempt", "1")),
            node_id=d.get("node") or None,
            deadline=int(d.get("deadline", "0")) / 1000,
            data=json.loads(d["data"]) if d.get("data") else {},
        )

    async def job_owner(self, job_id: str) -> str | None:
        v = await self._call(self.r.hget, K.job(job_id), "owner")
        return v.decode() if v is not None else None

    async def finish_job(self, job_id: JobId, owner: str, release: tuple[NodeId, int] | None = None) -> None:
        keys = [K.job(job_id), K.JOBS_ACTIVE]
        args: list[Any] = [owner, job_id, 600, ""]
        if release is not None:
            keys.append(K.slots(release[0]))
            args[3] = f"{job_id}:{release[1]}"
        used = await self._run(self._finish_job, keys=keys, args=args)
        if release is not None:
            self._reserved(release[0], int(used))

    def _reserved(self, node_id: NodeId, used: int) -> None:
        """Mirror a node's slots in use as a script reported them (-1: not reported)."""
        view = self.index.get(node_id)
        if view is not None and used >= 0:
            view.reserved = used
            self.index.refresh(node_id)

    async def claim_expired_jobs(self, owner: str, now: float, live: set[str], limit: int) -> list[JobRecord]:
        ids = await self._run(
            self._claim,
            keys=[K.JOBS_ACTIVE],
            args=[owner, int(now * 1000), limit, K.PREFIX + "job:", *sorted(live)],
        )
        out = []
        for raw in ids:
            rec = await self.load_job(JobId(raw.decode()))
            if rec is not None:
                out.append(rec)
        return out

    # ------------------------------------------------------------------ instances and inboxes

    async def instance_alive(self, instance_id: str, ttl: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.set(K.instance(instance_id), str(time.time()), px=int(ttl * 1000))
        pipe.sadd(K.INSTANCES, instance_id)
        await self._call(pipe.execute)

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
                await self._wire_call(wire, "XGROUP", "CREATE", key, K.INBOX_GROUP, "$", "MKSTREAM")
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

    async def restore_session(self, record: SessionRecord, last_seq: int, ttl: float) -> None:
        """After Redis lost its data: write the session back, keeping its numbering."""
        await self.create_session(record, ttl)
        await self._call(self.r.set, K.seqno(record.session_id), last_seq, nx=True)

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


async def wait_for_redis(url: str, timeout: float = 10.0) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                await r.ping()
                return
            except (RedisConnectionError, OSError):
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.05)
    finally:
        await r.aclose()
