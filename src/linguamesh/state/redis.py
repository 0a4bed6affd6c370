"""``RedisStateStore``: the shared state of many scheduler instances (``docs/cluster.md``).

Multi-key changes are one Lua script each (``redis_scripts``), loaded on connect and run by SHA over
the pipelined :class:`~.redis_wire.RedisWire` (the hot path; redis-py asyncio
serves the cold paths): slot reservation with the job record and its hand-over,
event append (numbering) and ordered result release with the job's end and the
holder's notice, owner-guarded job writes, takeover claims. Key names are in
``redis_keys``. Selection reads a local mirror of the node registry (kept
current on every local change, on notices from other instances and by a
periodic sync), so sampling candidates costs no round trip; the reserve
script has the final word on capacity.

Any connection problem becomes :class:`DependencyDown` (``redis_link``, which also
holds the connections and the instances' inboxes).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from ..core.ids import JobId, NodeId, SessionId
from ..core.nodes import NodeCapabilities, NodeView
from ..core.ordering import AlreadyDelivered, NotExpected
from . import redis_keys as K
from .base import (
    Handover,
    JobEnd,
    JobRecord,
    KnownOrder,
    Notify,
    SessionRecord,
)
from .limits import StoreLimits
from .memory import MemoryNodeIndex, transcript_info
from .redis_history import RedisHistory
from .redis_scripts import (
    ACCEPT,
    ACK,
    APPEND,
    APPEND_PUSH,
    CHARGE_KEY_AUDIO,
    CLAIM,
    CLAIM_ONE,
    CLAIM_ROOM,
    CLAIM_SESSION,
    FINISH_JOB,
    NODE_HEARTBEAT,
    OPEN_KEY_SESSION,
    RELEASE,
    REMOVE_NODE,
    RESERVE,
    RESTORE_SESSION,
    SAVE_JOB,
)
from .redis_sentinel import SentinelConfig
from .redis_wire import Script

T = TypeVar("T")

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


class RedisStateStore(RedisHistory):
    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        limits: StoreLimits | None = None,
        node_stale_after: float = 15.0,
        client: aioredis.Redis | None = None,
        sentinel: SentinelConfig | None = None,
        replicas: int = 0,
        wait_ms: int = 100,
    ) -> None:
        self.limits = limits or StoreLimits(history_events=history_size)
        self._limits = self.limits.lua()
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
        self._remove_node = Script("remove_node", REMOVE_NODE)
        self._restore_session = Script("restore_session", RESTORE_SESSION)
        self._node_heartbeat = Script("node_heartbeat", NODE_HEARTBEAT)
        self._ack = Script("ack_events", ACK)
        self._claim_room = Script("claim_room", CLAIM_ROOM)
        self._open_key_session = Script("open_key_session", OPEN_KEY_SESSION)
        self._charge_key = Script("charge_key_audio", CHARGE_KEY_AUDIO)
        scripts = (self._reserve, self._release, self._append, self._append_push, self._save_job,
                   self._finish_job, self._claim, self._claim_session, self._accept, self._claim_one)  # fmt: skip
        super().__init__(url, scripts, client, sentinel, replicas, wait_ms)

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
                "streaming": int(node.streaming),
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
        # one fenced script: a remove that Redis runs late (after a stall) must not delete
        # the record of the node's next registration
        view = self.index.get(node_id)
        pool = K.pool_members(view.pool) if view is not None else ""
        removed = await self._run(
            self._remove_node, keys=[K.node(node_id), K.NODES, pool], args=[node_id, owner or ""]
        )
        if removed:
            self.index.drop(node_id)
            self.owners.pop(node_id, None)

    async def heartbeat(self, node_id: NodeId, running_jobs: int, now: float) -> None:
        await self._run(
            self._node_heartbeat, keys=[K.node(node_id)], args=[int(time.time() * 1000), running_jobs]
        )
        view = self.index.get(node_id)
        if view is not None:
            view.running_jobs = running_jobs

    def nodes(self) -> MemoryNodeIndex:
        return self.index

    def node_owner(self, node_id: NodeId) -> str | None:
        return self.owners.get(node_id)

    async def refresh_node(self, node_id: NodeId, live: set[str] | None = None) -> bool:
        """Re-read one node from Redis into the local mirror (after a notice from another
        instance); True when it offers more than the mirror knew (see :meth:`sync_nodes`)."""
        raw = await self._call(self.r.hgetall, K.node(node_id))
        return self._mirror(node_id, raw, live)

    async def sync_nodes(self, live: set[str]) -> bool:
        """Re-read the whole registry into the local mirror; nodes of dead instances go offline.
        True when capacity appeared: a node new to the mirror, back online, or with free
        slots it did not have (then jobs waiting here must be tried again)."""
        ids = [x.decode() for x in await self._call(self.r.smembers, K.NODES)]
        pipe = self.r.pipeline(transaction=False)
        for nid in ids:
            pipe.hgetall(K.node(nid))
            pipe.zcard(K.slots(nid))
        res = await self._call(pipe.execute)
        seen = set()
        gained = False
        for i, nid in enumerate(ids):
            raw, used = res[2 * i], res[2 * i + 1]
            seen.add(nid)
            gained = self._mirror(NodeId(nid), raw, live, used) or gained
        for nid in [n for n in self.index.views if n not in seen]:
            self.index.drop(nid)
            self.owners.pop(nid, None)
        return gained

    def _mirror(
        self, node_id: NodeId, raw: dict[bytes, bytes], live: set[str] | None, used: int | None = None
    ) -> bool:
        """Put one node's record into the mirror; True when it offers more than before."""
        if b"owner" not in raw or b"caps" not in raw:  # gone (or a stub no registration wrote)
            self.index.drop(node_id)
            self.owners.pop(node_id, None)
            return False
        d = {k.decode(): v.decode() for k, v in raw.items()}
        owner = d["owner"]
        stale = time.time() * 1000 - int(d.get("hb", "0")) > self.node_stale_after * 1000
        online = not stale and (live is None or owner in live)
        old = self.index.get(node_id)
        caps = _caps_from(d["caps"])
        if old is not None and old.capabilities == caps and old.max_concurrent_jobs == int(d["max"]):
            before = (old.online, old.free_slots)
            old.online = online
            old.running_jobs = int(d.get("running", "0"))
            old.streaming = d.get("streaming") == "1"
            if used is not None:
                old.reserved = used
            self.owners[node_id] = owner
            self.index.refresh(node_id)
            return online and (not before[0] or old.free_slots > before[1])
        view = NodeView(node_id, caps, int(d["max"]), reserved=used or 0, online=online)
        view.streaming = d.get("streaming") == "1"
        view.running_jobs = int(d.get("running", "0"))
        self.owners[node_id] = owner
        self.index.put(view)
        return online

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
                     int(record.deadline * 1000), job_id, new_owner, record.traceparent or ""]  # fmt: skip
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
        # the numbering exists from the start: appends refuse a session without it (lost data)
        pipe.set(K.seqno(record.session_id), 0, nx=True, ex=self._ttl())
        info = transcript_info(record)
        meta = K.transcript_meta(record.session_id)
        pipe.hset(
            meta,
            mapping={"view_token": info.view_token, "src_lang": info.src_lang,
                     "tgt_langs": json.dumps(info.tgt_langs), "trace_id": info.trace_id,
                     "room": info.room or "", "title": info.title, "presenter": info.presenter,
                     "key_id": info.key_id or "", "langs_granted": json.dumps(info.langs_granted)},
        )  # fmt: skip
        pipe.hdel(meta, "ended_at")
        pipe.expire(meta, self._ttl() + int(self.limits.transcript_retention))
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
            usage={k[6:]: float(v) for k, v in d.items() if k.startswith("usage_")},
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
            args=[self._limits, self._ttl(), *note, *payloads],
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
        args: list[Any] = [self._limits, self._ttl(), index, result, "", "", 0, "", *note, tgt_lang]
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
        if flat[0] == 2:  # a copy of a result released before: the appended events stand
            raise AlreadyDelivered(f"index {index} was delivered already")
        if not flat[0]:  # the appended events stand; the caller re-sends the result
            raise NotExpected(f"index {index} was not expected or already completed")
        return self._pairs(flat[3:])

    async def drop_session(self, session_id: SessionId) -> None:
        rec = await self.load_session(session_id)
        keys = [K.session(session_id), K.seqno(session_id), K.history(session_id),
                K.history_bytes(session_id), K.history_drafts(session_id), K.history_evicted(session_id),
                K.requests(session_id), K.listeners(session_id), K.listeners_since(session_id)]  # fmt: skip
        langs = list(await self.listeners(session_id))
        if rec is not None:
            langs += rec.settings.get("tgt_langs", [])
        for tgt in dict.fromkeys(langs):
            keys += [K.pending(session_id, tgt), K.done(session_id, tgt)]
        keep = max(1, int(self.limits.transcript_retention))
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(*keys)
        meta = K.transcript_meta(session_id)
        if rec is not None:  # the transcript outlives the session by the retention time
            pipe.hset(meta, "ended_at", repr(time.time()))
        pipe.expire(meta, keep)
        pipe.expire(K.transcript(session_id), keep)
        await self._call(pipe.execute)

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
            traceparent=d.get("traceparent") or None,
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

    async def claim_expired_jobs(
        self,
        owner: str,
        now: float,
        live: set[str],
        limit: int,
        *,
        unplaced: bool = False,
        orphaned: bool = False,
    ) -> list[JobRecord]:
        ids = await self._run(
            self._claim,
            keys=[K.JOBS_ACTIVE],
            args=[
                owner,
                int(now * 1000),
                limit,
                K.PREFIX + "job:",
                K.instance(""),
                2 if orphaned else int(unplaced),
                *sorted(live),
            ],
        )
        out = []
        for raw in ids:
            rec = await self.load_job(JobId(raw.decode()))
            if rec is not None:
                out.append(rec)
        return out

    async def restore_session(
        self,
        record: SessionRecord,
        last_seq: int,
        ttl: float,
        order: dict[str, KnownOrder] | None = None,
    ) -> list[tuple[int, bytes]]:
        """After Redis lost its data: write the session back, keeping its numbering and
        what its holder knows of the ordering state (one script)."""
        await self.create_session(record, ttl)
        sid = SessionId(record.session_id)
        keys: list[Any] = [K.seqno(sid), K.history(sid)]
        args: list[Any] = [last_seq, self._ttl(), self._limits]
        for tgt, known in (order or {}).items():
            keys += [K.pending(sid, tgt), K.done(sid, tgt)]
            args += [len(known.released), len(known.held), *sorted(known.released)]
            for index, payload in sorted(known.held.items()):
                args += [index, payload]
        return self._pairs(await self._run(self._restore_session, keys=keys, args=args))


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
