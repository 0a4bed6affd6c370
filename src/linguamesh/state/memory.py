"""In-memory ``StateStore``: one scheduler instance, state lost on restart."""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..core.history import EventHistory, compacted
from ..core.ids import JobId, NodeId, SessionId
from ..core.nodes import NodeView
from ..core.ordering import NotExpected, OrderedStream
from ..core.reservation import NodeSlots
from ..protocol import draft_keys, transcript_form, with_seq
from .base import (
    Handover,
    JobEnd,
    JobRecord,
    KnownOrder,
    Notify,
    RoomRecord,
    SessionRecord,
    TranscriptInfo,
)
from .limits import MAX_ROOM_SESSIONS, MAX_ROOMS, StoreLimits


def transcript_info(record: SessionRecord) -> TranscriptInfo:
    st = record.settings
    return TranscriptInfo(
        record.session_id, record.view_token, st.get("src_lang", ""), list(st.get("tgt_langs", [])),
        record.trace_id, room=st.get("room"), title=st.get("title") or "", presenter=st.get("presenter") or "",
        key_id=st.get("key_id"), langs_granted=st.get("langs_granted"),
    )  # fmt: skip


@dataclass(slots=True)
class _Transcript:
    info: TranscriptInfo
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    expires_at: float | None = None  # set when the session ends
    bytes: int = 0


class _Members:
    """A set with O(1) add, remove and random sampling."""

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[NodeId] = []
        self.pos: dict[NodeId, int] = {}

    def add(self, x: NodeId) -> None:
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: NodeId) -> None:
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if last != x:
            self.items[i] = last
            self.pos[last] = i

    def sample(self, k: int, rng: random.Random) -> list[NodeId]:
        if len(self.items) <= k:
            out = list(self.items)
            rng.shuffle(out)
            return out
        return rng.sample(self.items, k)

    def __len__(self) -> int:
        return len(self.items)


class MemoryNodeIndex:
    """Node registry with pool membership and per-pool free lists (a ``NodeSource``)."""

    def __init__(self) -> None:
        self.views: dict[NodeId, NodeView] = {}
        self.pools: dict[str, _Members] = {}
        self.free: dict[str, _Members] = {}
        self.by_lang: dict[str, set[str]] = {}
        #: how many registered nodes offer repair per language (repair is a stage only if some do)
        self.repair: dict[str, int] = {}

    def put(self, node: NodeView) -> None:
        self.drop(node.node_id)
        self.views[node.node_id] = node
        self.pools.setdefault(node.pool, _Members()).add(node.node_id)
        self.free.setdefault(node.pool, _Members())
        for lang in node.capabilities.languages():
            self.by_lang.setdefault(lang, set()).add(node.pool)
        for lang in node.capabilities.repair:
            self.repair[lang] = self.repair.get(lang, 0) + 1
        self.refresh(node.node_id)

    def drop(self, node_id: NodeId) -> NodeView | None:
        node = self.views.pop(node_id, None)
        if node is None:
            return None
        for lang in node.capabilities.repair:
            self.repair[lang] -= 1
            if not self.repair[lang]:
                del self.repair[lang]
        members = self.pools[node.pool]
        members.discard(node_id)
        self.free[node.pool].discard(node_id)
        if not members:
            del self.pools[node.pool]
            del self.free[node.pool]
            for lang in node.capabilities.languages():
                pools = self.by_lang.get(lang)
                if pools is not None:
                    pools.discard(node.pool)
                    if not pools:
                        del self.by_lang[lang]
        return node

    def refresh(self, node_id: NodeId) -> None:
        node = self.views.get(node_id)
        if node is None:
            return
        if node.online and node.free_slots > 0:
            self.free[node.pool].add(node_id)
        else:
            self.free[node.pool].discard(node_id)

    # NodeSource
    def get(self, node_id: NodeId) -> NodeView | None:
        return self.views.get(node_id)

    def repair_available(self, lang: str) -> bool:
        return self.repair.get(lang, 0) > 0

    def pool_names(self, limit: int = 10) -> list[str]:
        return sorted(self.pools)[:limit]

    def pools_with(self, lang: str) -> Iterable[str]:
        return self.by_lang.get(lang, ())

    def pool_count(self) -> int:
        return len(self.pools)

    def sample_free(self, pool: str, k: int, rng: random.Random) -> Sequence[NodeView]:
        members = self.free.get(pool)
        if members is None:
            return []
        return [self.views[n] for n in members.sample(k, rng)]

    def all_nodes(self) -> Iterable[NodeView]:
        return self.views.values()


class MemoryStateStore:
    def __init__(
        self,
        *,
        history_size: int = 1000,
        limits: StoreLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.index = MemoryNodeIndex()
        self.slots: dict[NodeId, NodeSlots] = {}
        self.owners: dict[NodeId, str] = {}
        self.requests: dict[SessionId, dict[str, JobId]] = {}
        self.histories: dict[SessionId, EventHistory[bytes]] = {}
        self.streams: dict[tuple[SessionId, str], OrderedStream[bytes]] = {}
        self.sessions: dict[SessionId, SessionRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        self.limits = limits or StoreLimits(history_events=history_size)
        self.transcripts: dict[SessionId, _Transcript] = {}
        self.rooms: OrderedDict[str, RoomRecord] = OrderedDict()
        self.room_history: dict[str, list[str]] = {}
        #: per session: its listener languages and when each lapses
        self.listening: dict[SessionId, dict[str, tuple[float, float]]] = {}
        self.key_sessions: dict[str, dict[str, float]] = {}
        self.key_audio: dict[tuple[str, int], float] = {}
        self.key_usage: dict[str, dict[str, float]] = {}
        self.clock = clock

    # nodes
    async def register_node(self, node: NodeView, owner: str) -> None:
        slots = self.slots.get(node.node_id)
        if slots is None:
            slots = self.slots[node.node_id] = NodeSlots(node.max_concurrent_jobs)
        slots.capacity = node.max_concurrent_jobs
        slots.purge(self.clock())
        node.reserved = slots.used
        self.owners[node.node_id] = owner
        self.index.put(node)

    async def remove_node(self, node_id: NodeId, owner: str | None = None) -> None:
        if owner is not None and self.owners.get(node_id) not in (None, owner):
            return
        self.index.drop(node_id)
        self.slots.pop(node_id, None)
        self.owners.pop(node_id, None)

    async def heartbeat(self, node_id: NodeId, running_jobs: int, now: float) -> None:
        node = self.index.get(node_id)
        if node is not None:
            node.running_jobs = running_jobs
            node.last_heartbeat = now
            slots = self.slots[node_id]
            if slots.purge(self.clock()):
                node.reserved = slots.used
                self.index.refresh(node_id)

    def nodes(self) -> MemoryNodeIndex:
        return self.index

    def node_owner(self, node_id: NodeId) -> str | None:
        return self.owners.get(node_id)

    # reservations
    async def reserve(
        self,
        node_id: NodeId,
        job_id: JobId,
        attempt_id: int,
        ttl: float,
        record: JobRecord | None = None,
        handover: Handover | None = None,
    ) -> bool:
        """One process: a hand-over changes the record's owner; there is no inbox to use."""
        node = self.index.get(node_id)
        slots = self.slots.get(node_id)
        if node is None or slots is None or not node.online:
            return False
        ok = slots.reserve((job_id, attempt_id), self.clock(), ttl)
        node.reserved = slots.used
        self.index.refresh(node_id)
        if ok and record is not None:
            old = self.jobs.get(record.job_id)
            if old is None or old.owner == record.owner:
                new_owner = handover.to_instance if handover is not None else record.owner
                keep = old.data if old is not None else {}
                trace = record.traceparent or (old.traceparent if old is not None else None)
                self.jobs[record.job_id] = JobRecord(
                    record.job_id,
                    new_owner,
                    record.state,
                    record.attempt_id,
                    record.node_id,
                    record.deadline,
                    keep,
                    trace,
                )
        return ok

    async def release(self, node_id: NodeId, job_id: JobId, attempt_id: int) -> bool:
        slots = self.slots.get(node_id)
        if slots is None:
            return False
        ok = slots.release((job_id, attempt_id))
        node = self.index.get(node_id)
        if node is not None:
            node.reserved = slots.used
            self.index.refresh(node_id)
        return ok

    # idempotency
    async def bind_request(self, session_id: SessionId, key: str, job_id: JobId) -> JobId | None:
        bound = self.requests.setdefault(session_id, {})
        existing = bound.get(key)
        if existing is not None:
            return existing
        bound[key] = job_id
        return None

    async def accept_utterance(
        self,
        session_id: SessionId,
        index: int,
        request_id: str | None,
        jobs: list[JobRecord],
        tgt_langs: list[str],
    ) -> str | None:
        bound = self.requests.setdefault(session_id, {})
        if f"u:{index}" in bound:
            return "index"
        if request_id is not None and f"r:{request_id}" in bound:
            return "request"
        first = JobId(jobs[0].job_id) if jobs else JobId("")
        bound[f"u:{index}"] = first
        if request_id is not None:
            bound[f"r:{request_id}"] = first
        await self.set_max_index(session_id, index)
        for tgt in tgt_langs:
            await self.expect_result(session_id, tgt, index)
        for rec in jobs:
            self.jobs[rec.job_id] = rec
        return None

    async def lookup_request(self, session_id: SessionId, key: str) -> JobId | None:
        return self.requests.get(session_id, {}).get(key)

    # history
    def _history(self, session_id: SessionId) -> EventHistory[bytes]:
        h = self.histories.get(session_id)
        if h is None:
            lim = self.limits
            h = self.histories[session_id] = EventHistory(lim.history_events, lim.history_bytes, len)
        return h

    def _transcript(self, session_id: SessionId) -> _Transcript | None:
        t = self.transcripts.get(session_id)
        if t is not None and t.expires_at is not None and t.expires_at <= self.clock():
            del self.transcripts[session_id]
            return None
        return t

    async def append_events(
        self, session_id: SessionId, payloads: list[bytes], notify: Notify | None = None
    ) -> list[tuple[int, bytes]]:
        h = self._history(session_id)
        out = []
        for payload in payloads:
            seq = h.last_seq + 1
            data = with_seq(payload, seq)
            key, ends = draft_keys(data)
            h.append(seq, data, key, ends)
            out.append((seq, data))
            kept = transcript_form(data)
            if kept is not None and (t := self._transcript(session_id)) is not None:
                t.entries.append((seq, kept))
                t.bytes += len(kept)
                over = len(t.entries) - self.limits.transcript_entries
                if over > 0:
                    t.bytes -= sum(len(e) for _, e in t.entries[:over])
                    del t.entries[:over]
        return out

    async def expect_result(self, session_id: SessionId, tgt_lang: str, index: int) -> None:
        self.streams.setdefault((session_id, tgt_lang), OrderedStream()).expect(index)

    async def push_result(
        self,
        session_id: SessionId,
        tgt_lang: str,
        index: int,
        payload: bytes,
        end: JobEnd | None = None,
        notify: Notify | None = None,
    ) -> list[tuple[int, bytes]]:
        if end is not None:
            await self.finish_job(end.job_id, end.owner, end.release)
        stream = self.streams.get((session_id, tgt_lang))
        if stream is None:
            raise NotExpected(f"index {index} was not expected or already completed")
        ready = stream.complete(index, payload)
        return await self.append_events(session_id, ready)

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
        """One process: there is no other holder to notify (``notify`` stays unsent)."""
        events = await self.append_events(session_id, payloads)
        return events + await self.push_result(session_id, tgt_lang, index, result, end)

    async def last_seq(self, session_id: SessionId) -> int:
        return self._history(session_id).last_seq

    # sessions
    async def create_session(self, record: SessionRecord, ttl: float) -> None:
        sid = SessionId(record.session_id)
        self.sessions[sid] = record
        t = self._transcript(sid)
        if t is None:
            self.transcripts[sid] = _Transcript(transcript_info(record))
        else:
            t.expires_at = None
        now = self.clock()
        for gone in [
            k for k, v in self.transcripts.items() if v.expires_at is not None and v.expires_at <= now
        ]:
            del self.transcripts[gone]

    async def restore_session(
        self,
        record: SessionRecord,
        last_seq: int,
        ttl: float,
        order: dict[str, KnownOrder] | None = None,
    ) -> list[tuple[int, bytes]]:
        """Nothing is ever lost in memory: the record is written again, the numbering and
        the ordering state kept."""
        await self.create_session(record, ttl)
        return []

    async def load_session(self, session_id: SessionId) -> SessionRecord | None:
        return self.sessions.get(session_id)

    async def claim_session(self, session_id: SessionId, owner: str, ttl: float) -> str | None:
        rec = self.sessions.get(session_id)
        if rec is None:
            return None
        previous, rec.owner = rec.owner, owner
        return previous

    async def session_owner(self, session_id: SessionId) -> str | None:
        rec = self.sessions.get(session_id)
        return rec.owner if rec else None

    async def set_max_index(self, session_id: SessionId, index: int) -> None:
        rec = self.sessions.get(session_id)
        if rec is not None:
            rec.max_index = max(rec.max_index, index)

    # jobs
    async def save_job(self, record: JobRecord) -> bool:
        old = self.jobs.get(record.job_id)
        if old is not None and old.owner != record.owner:
            return False
        self.jobs[record.job_id] = record
        return True

    async def load_job(self, job_id: JobId) -> JobRecord | None:
        return self.jobs.get(job_id)

    async def finish_job(self, job_id: JobId, owner: str, release: tuple[NodeId, int] | None = None) -> None:
        if release is not None:
            await self.release(release[0], job_id, release[1])
        rec = self.jobs.get(job_id)
        if rec is not None and rec.owner == owner:
            del self.jobs[job_id]

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
        claimed: list[JobRecord] = []
        for rec in list(self.jobs.values()):
            if len(claimed) >= limit:
                break
            due = orphaned or rec.deadline <= now or (unplaced and rec.state == "created")
            if due and rec.owner not in live:
                rec.owner = owner
                claimed.append(rec)
        return claimed

    # instances
    async def instance_alive(self, instance_id: str, ttl: float) -> None:
        self._live = {instance_id}

    async def live_instances(self) -> set[str]:
        return set(getattr(self, "_live", set()))

    def held_bytes(self) -> int:
        """Bytes of events kept: every window and transcript."""
        windows = sum(h.bytes for h in self.histories.values())
        return windows + sum(t.bytes for t in self.transcripts.values())

    async def events_since(self, session_id: SessionId, last_seq: int) -> list[tuple[int, bytes]]:
        return self._history(session_id).since(last_seq)

    async def replay(
        self, session_id: SessionId, last_seq: int, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        h = self._history(session_id)
        window = h.since(max(last_seq, h.first_kept - 1)) if last_seq <= h.last_seq else []
        t = self._transcript(session_id)
        entries = t.entries if t is not None else []
        out = compacted(last_seq, h.last_seq, window, h.first_kept, entries)
        return out if limit is None else out[:limit]

    async def transcript(self, session_id: SessionId) -> list[tuple[int, bytes]]:
        t = self._transcript(session_id)
        return list(t.entries) if t is not None else []

    async def transcript_info(self, session_id: SessionId) -> TranscriptInfo | None:
        t = self._transcript(session_id)
        return t.info if t is not None else None

    async def ack_events(self, session_id: SessionId, seq: int) -> None:
        self._history(session_id).ack(seq)

    async def drop_session(self, session_id: SessionId) -> None:
        t = self._transcript(session_id)
        if t is not None:
            t.info.ended_at = time.time()
            t.expires_at = self.clock() + self.limits.transcript_retention
        self.histories.pop(session_id, None)
        self.requests.pop(session_id, None)
        self.sessions.pop(session_id, None)
        self.listening.pop(session_id, None)
        for key in [k for k in self.streams if k[0] == session_id]:
            del self.streams[key]

    # listeners
    async def touch_listener(self, session_id: SessionId, lang: str, now: float, until: float) -> None:
        langs = self.listening.setdefault(session_id, {})
        langs[lang] = (langs[lang][0] if lang in langs else now, until)

    async def listeners(self, session_id: SessionId) -> dict[str, tuple[float, float]]:
        return dict(self.listening.get(session_id, {}))

    # rooms
    async def claim_room(self, room: str, record: RoomRecord) -> bool:
        held = self.rooms.get(room)
        if held is not None and held.key_hash != record.key_hash:
            return False
        self.rooms[room] = record
        self.rooms.move_to_end(room)
        history = self.room_history.setdefault(room, [])
        if record.session_id not in history:
            history.append(record.session_id)
            del history[:-MAX_ROOM_SESSIONS]
        while len(self.rooms) > MAX_ROOMS:
            gone, _ = self.rooms.popitem(last=False)
            self.room_history.pop(gone, None)
        return True

    async def room(self, room: str) -> RoomRecord | None:
        return self.rooms.get(room)

    async def room_sessions(self, room: str) -> list[str]:
        return list(self.room_history.get(room, []))

    # API keys
    async def open_key_session(self, key_id: str, session_id: str, most: int | None, ttl: float) -> bool:
        now = self.clock()
        open_ = self.key_sessions.setdefault(key_id, {})
        for sid in [s for s, until in open_.items() if until <= now]:
            del open_[sid]
        if session_id not in open_ and most is not None and len(open_) >= most:
            return False
        open_[session_id] = now + ttl
        return True

    async def close_key_session(self, key_id: str, session_id: str) -> None:
        self.key_sessions.get(key_id, {}).pop(session_id, None)

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
        hour = int(now // 3600)
        used = self.key_audio.get((key_id, hour), 0.0)
        if per_hour is not None and used + seconds > per_hour:
            return False
        self.key_audio = {k: v for k, v in self.key_audio.items() if k[1] >= hour - 1}
        self.key_audio[(key_id, hour)] = used + seconds
        amounts = {"audio_seconds": seconds, "utterances": float(utterances), "jobs": float(jobs)}
        await self.add_usage(key_id, **amounts)
        rec = self.sessions.get(SessionId(session_id)) if session_id is not None else None
        if rec is not None:
            for name, value in amounts.items():
                rec.usage[name] = rec.usage.get(name, 0.0) + value
        return True

    async def add_usage(self, key_id: str, **amounts: float) -> None:
        totals = self.key_usage.setdefault(key_id, {})
        for name, value in amounts.items():
            totals[name] = totals.get(name, 0.0) + value

    async def usage(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.key_usage.items()}

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass
