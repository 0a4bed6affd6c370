"""The read side of a session's events in Redis: the replay window, the transcript, the
compacted replay of both, and rooms; and the session's listener languages. The writes of
events (numbering, ordering) are the scripts' (``redis_scripts``), run by
:class:`~.redis.RedisStateStore`, which builds on this."""

from __future__ import annotations

import json
import time
from typing import Any

from ..core.history import ReplayGap, compacted
from ..core.ids import SessionId
from . import redis_keys as K
from .base import RoomRecord, TranscriptInfo
from .limits import MAX_ROOM_SESSIONS, ROOM_TTL
from .redis_link import RedisLink
from .redis_wire import Script


class RedisHistory(RedisLink):
    _ack: Script
    _claim_room: Script
    _open_key_session: Script
    _charge_key: Script

    async def events_since(self, session_id: SessionId, last_seq: int) -> list[tuple[int, bytes]]:
        pipe = self.r.pipeline(transaction=True)
        pipe.get(K.seqno(session_id))
        pipe.xrange(K.history(session_id), min=f"({last_seq}-0", max="+")
        pipe.xrange(K.history(session_id), min="-", max="+", count=1)
        pipe.get(K.history_evicted(session_id))
        cur, entries, first, evicted = await self._call(pipe.execute)
        current = int(cur) if cur else 0
        if last_seq > current:
            raise ReplayGap(f"last_seq {last_seq} is ahead of the session ({current})")
        out = self._numbered(entries)
        oldest = self._numbered(first)[0][0] if first else current + 1
        gone = int(evicted) if evicted else 0  # superseded drafts leave holes, not gaps
        if last_seq < gone:
            raise ReplayGap(f"events {last_seq + 1}..{gone} are no longer kept", oldest)
        return out

    async def replay(
        self, session_id: SessionId, last_seq: int, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        pipe = self.r.pipeline(transaction=True)
        pipe.get(K.seqno(session_id))
        pipe.xrange(K.history(session_id), min=f"({last_seq}-0", max="+", count=limit)
        pipe.xrange(K.history(session_id), min="-", max="+", count=1)
        cur, entries, first = await self._call(pipe.execute)
        current = int(cur) if cur else 0
        window = self._numbered(entries)
        first_kept = self._numbered(first)[0][0] if first else current + 1
        older: list[tuple[int, bytes]] = []
        if last_seq + 1 < first_kept <= current + 1:  # the window moved on: the transcript fills in
            raw = await self._call(
                self.r.xrange,
                K.transcript(session_id),
                min=f"({last_seq}-0",
                max=f"({first_kept}-0",
                count=limit,
            )
            older = self._numbered(raw)
        out = compacted(last_seq, current, window, first_kept, older)
        return out if limit is None else out[:limit]

    @staticmethod
    def _numbered(raw: list[Any]) -> list[tuple[int, bytes]]:
        return [(int(eid.split(b"-")[0]), fields[b"d"]) for eid, fields in raw]

    async def transcript(self, session_id: SessionId) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        start = "-"
        while True:  # in pages: a long session's transcript is thousands of entries
            raw = await self._call(self.r.xrange, K.transcript(session_id), min=start, max="+", count=2000)
            out += self._numbered(raw)
            if len(raw) < 2000:
                return out
            start = f"({out[-1][0]}-0"

    async def transcript_info(self, session_id: SessionId) -> TranscriptInfo | None:
        raw = await self._call(self.r.hgetall, K.transcript_meta(session_id))
        if not raw or b"view_token" not in raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        ended = d.get("ended_at")
        return TranscriptInfo(
            session_id, d["view_token"], d.get("src_lang", ""), json.loads(d.get("tgt_langs", "[]")),
            d.get("trace_id", ""), float(ended) if ended else None, d.get("room") or None,
            d.get("title", ""), d.get("presenter", ""), d.get("key_id") or None,
            json.loads(d.get("langs_granted") or "null"),
        )  # fmt: skip

    async def last_seq(self, session_id: SessionId) -> int:
        v = await self._call(self.r.get, K.seqno(session_id))
        return int(v) if v else 0

    async def ack_events(self, session_id: SessionId, seq: int) -> None:
        await self._run(self._ack, keys=[K.history(session_id)], args=[seq])

    # ------------------------------------------------------------------ rooms

    async def claim_room(self, room: str, record: RoomRecord) -> bool:
        args = [record.key_hash.hex(), record.session_id, record.view_token, ROOM_TTL, MAX_ROOM_SESSIONS]
        return bool(await self._run(self._claim_room, keys=[K.room(room), K.room_sessions(room)], args=args))

    async def room_sessions(self, room: str) -> list[str]:
        return [x.decode() for x in await self._call(self.r.lrange, K.room_sessions(room), 0, -1)]

    # ------------------------------------------------------------------ listeners

    async def touch_listener(self, session_id: SessionId, lang: str, now: float, until: float) -> None:
        key, since = K.listeners(session_id), K.listeners_since(session_id)
        # dropped with the session, or a while after its last listener (a session lost
        # without a drop leaves nothing behind for long)
        ttl = max(60, int(until - now) + 3600)
        pipe = self.r.pipeline(transaction=True)
        pipe.hsetnx(since, lang, repr(now))
        pipe.hset(key, lang, repr(until))
        pipe.expire(since, ttl)
        pipe.expire(key, ttl)
        await self._call(pipe.execute)

    async def listeners(self, session_id: SessionId) -> dict[str, tuple[float, float]]:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(K.listeners_since(session_id))
        pipe.hgetall(K.listeners(session_id))
        since, until = await self._call(pipe.execute)
        return {k.decode(): (float(since.get(k, v)), float(v)) for k, v in until.items()}

    # ------------------------------------------------------------------ API keys

    async def open_key_session(self, key_id: str, session_id: str, most: int | None, ttl: float) -> bool:
        now = int(time.time() * 1000)
        args = [session_id, "" if most is None else most, now + int(ttl * 1000), now]
        return bool(await self._run(self._open_key_session, keys=[K.key_sessions(key_id)], args=args))

    async def close_key_session(self, key_id: str, session_id: str) -> None:
        await self._call(self.r.zrem, K.key_sessions(key_id), session_id)

    async def charge_key(
        self,
        key_id: str,
        seconds: float,
        per_hour: int | None,
        now: float,
        utterances: int = 0,
        jobs: int = 0,
        session_id: str | None = None,
    ) -> bool:
        # (a session's own usage: on its hash, where it is, when given)
        session = K.session(session_id) if session_id is not None else K.session("-")
        keys = [K.key_audio(key_id, int(now // 3600)), K.key_usage(key_id), K.KEYS_USED, session]
        args = [repr(seconds), "" if per_hour is None else per_hour, key_id, utterances, jobs]
        return bool(await self._run(self._charge_key, keys=keys, args=args))

    async def add_usage(self, key_id: str, **amounts: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        for name, value in amounts.items():
            pipe.hincrbyfloat(K.key_usage(key_id), name, value)
        pipe.sadd(K.KEYS_USED, key_id)
        await self._call(pipe.execute)

    async def usage(self) -> dict[str, dict[str, float]]:
        ids = sorted(x.decode() for x in await self._call(self.r.smembers, K.KEYS_USED))
        pipe = self.r.pipeline(transaction=False)
        for kid in ids:
            pipe.hgetall(K.key_usage(kid))
        rows = await self._call(pipe.execute) if ids else []
        return {
            kid: {k.decode(): float(v) for k, v in row.items()} for kid, row in zip(ids, rows, strict=True)
        }

    async def room(self, room: str) -> RoomRecord | None:
        raw = await self._call(self.r.hgetall, K.room(room))
        if not raw or b"session_id" not in raw:
            return None
        return RoomRecord(bytes.fromhex(raw[b"key"].decode()), raw[b"session_id"].decode(),
                          raw[b"view_token"].decode())  # fmt: skip
