"""One contract suite, run against the memory store and a real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from linguamesh import protocol as p
from linguamesh.core.history import ReplayGap
from linguamesh.core.ids import JobId, NodeId, SessionId
from linguamesh.core.nodes import NodeCapabilities, NodeView
from linguamesh.core.ordering import AlreadyDelivered, NotExpected
from linguamesh.state import redis_keys as K
from linguamesh.state.base import (
    Handover,
    JobEnd,
    JobRecord,
    KnownOrder,
    Notify,
    RoomRecord,
    SessionRecord,
    SessionStateLost,
)
from linguamesh.state.limits import StoreLimits
from linguamesh.state.memory import MemoryStateStore
from linguamesh.state.redis import RedisStateStore

from ..conftest import SCALE

SID = SessionId("s-1")
CAPS = NodeCapabilities(asr=frozenset({"en"}), nmt=frozenset({("en", "es")}), tts=frozenset({"es"}))


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        s: Any = MemoryStateStore(history_size=5)
    else:
        s = RedisStateStore(request.getfixturevalue("redis_url"), history_size=5)
    # events are appended only to a session that exists (its numbering is made with it)
    await s.create_session(SessionRecord(SID, "t", "rt", "vt", {"tgt_langs": ["es", "fr"]}, "A"), 60)
    yield s
    await s.close()


def node(nid: str = "n1", slots: int = 2) -> NodeView:
    return NodeView(NodeId(nid), CAPS, slots)


def ev(index: int) -> bytes:
    return p.encode(p.JobStatus(utterance_index=index, tgt_lang="es", status="queued"))


def res(index: int) -> bytes:
    return p.encode(
        p.TranslationResult(utterance_index=index, tgt_lang="es", job_id=f"j{index}", status="ok")
    )


async def test_register_and_view_nodes(store: Any) -> None:
    await store.register_node(node("n1"), "A")
    view = store.nodes().get("n1")
    assert view is not None and view.pool == "en-es" and store.node_owner("n1") == "A"
    assert list(store.nodes().pools_with("en")) == ["en-es"]
    await store.remove_node(NodeId("n1"))
    assert store.nodes().get("n1") is None


async def test_reservation_capacity_idempotency_and_release(store: Any) -> None:
    await store.register_node(node("n1", 2), "A")
    n1 = NodeId("n1")
    assert await store.reserve(n1, JobId("a"), 1, 30)
    assert await store.reserve(n1, JobId("a"), 1, 30)  # same key: no second slot
    assert await store.reserve(n1, JobId("b"), 1, 30)
    assert not await store.reserve(n1, JobId("c"), 1, 30)
    assert store.nodes().get(n1).reserved == 2
    assert await store.release(n1, JobId("a"), 1)
    assert not await store.release(n1, JobId("a"), 1)
    assert await store.reserve(n1, JobId("c"), 1, 30)
    assert not await store.reserve(NodeId("unknown"), JobId("x"), 1, 30)


async def test_reservations_expire(store: Any) -> None:
    await store.register_node(node("n1", 1), "A")
    assert await store.reserve(NodeId("n1"), JobId("a"), 1, 0.05)
    if isinstance(store, MemoryStateStore):
        store.clock = lambda: time.monotonic() + 1
    else:
        await asyncio.sleep(0.1 * SCALE)
    assert await store.reserve(NodeId("n1"), JobId("b"), 1, 30)


async def test_request_binding_is_idempotent(store: Any) -> None:
    assert await store.bind_request(SID, "r:x", JobId("j1")) is None
    assert await store.bind_request(SID, "r:x", JobId("j2")) == "j1"
    assert await store.lookup_request(SID, "r:x") == "j1"
    assert await store.lookup_request(SID, "r:y") is None


async def test_events_are_numbered_kept_and_replayed(store: Any) -> None:
    out = await store.append_events(SID, [ev(0), ev(1)])
    assert [s for s, _ in out] == [1, 2]
    assert p.decode_event(out[1][1]).seq == 2
    await store.append_events(SID, [ev(i) for i in range(2, 7)])
    assert await store.last_seq(SID) == 7
    since = await store.events_since(SID, 4)
    assert [s for s, _ in since] == [5, 6, 7]
    with pytest.raises(ReplayGap) as gap:
        await store.events_since(SID, 0)  # history keeps 5: events 1-2 are gone
    assert gap.value.kept_from == 3  # where what is kept starts
    with pytest.raises(ReplayGap) as ahead:
        await store.events_since(SID, 99)
    assert ahead.value.kept_from is None
    await store.ack_events(SID, 6)
    assert [s for s, _ in await store.events_since(SID, 6)] == [7]


def make(kind: str, request: pytest.FixtureRequest, limits: StoreLimits) -> Any:
    if kind == "memory":
        return MemoryStateStore(limits=limits)
    return RedisStateStore(request.getfixturevalue("redis_url"), limits=limits)


def spoken(index: int, speech: int = 0) -> bytes:
    """A result with ``speech`` bytes of synthesized audio."""
    return p.encode(
        p.TranslationResult(
            utterance_index=index, tgt_lang="es", job_id=f"j{index}", status="ok", text_asr=f'said {index} ,"tts_audio":"x',
            text_translated=f"dicho {index}", tts_audio=b"\x01" * speech if speech else None, tts_format="wav",
        )
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_window_is_bounded_by_bytes_and_the_transcript_keeps_every_result(
    kind: str, request: pytest.FixtureRequest
) -> None:
    store = make(kind, request, StoreLimits(history_events=1000, history_bytes=20_000))
    sid = SessionId(f"long-{kind}")
    await store.create_session(
        SessionRecord(
            sid,
            "t",
            "rt",
            "vt",
            {"src_lang": "en", "tgt_langs": ["es"], "title": "City history", "presenter": "Ana"},
            "A",
        ),
        60,
    )
    try:
        for i in range(40):  # drafts and results with speech, far more than the window holds
            await store.expect_result(sid, "es", i)
            await store.append_and_push(sid, [ev(i), ev(i)], "es", i, spoken(i, 3000))
        window = await store.events_since(sid, (await store.last_seq(sid)) - 3)
        assert len(window) == 3
        with pytest.raises(ReplayGap) as gap:
            await store.events_since(sid, 0)
        first_kept = gap.value.kept_from
        assert first_kept is not None and first_kept > 1
        if kind == "redis":  # the window's byte count matches what it holds
            r = store.r
            held = sum(len(f[b"d"]) for _, f in await r.xrange(K.history(sid)))
            assert int(await r.get(K.history_bytes(sid))) == held <= 20_000
            assert 15_000 < held
        transcript = await store.transcript(sid)
        assert [p.decode_event(d).utterance_index for _, d in transcript] == list(range(40))  # type: ignore[union-attr]
        kept = [p.decode_event(d) for _, d in transcript]
        assert all(k.tts_audio is None and k.text_asr.endswith('"tts_audio":"x') for k in kept)  # type: ignore[union-attr]
        assert [s for s, _ in transcript] == [3 * i + 3 for i in range(40)]  # the seq each result had
        # a client from the start gets every result, then the whole window: no gap, in order
        replay = await store.replay(sid, 0)
        seqs = [s for s, _ in replay]
        assert seqs == sorted(set(seqs))
        last = await store.last_seq(sid)
        assert seqs == [3 * i + 3 for i in range(40) if 3 * i + 3 < first_kept] + list(
            range(first_kept, last + 1)
        )
        results = [d for _, d in replay if p.event_type(d) == "translation_result"]
        assert [p.decode_event(d).utterance_index for d in results] == list(range(40))  # type: ignore[union-attr]
        # read in pages, the replay is the same
        paged: list[tuple[int, bytes]] = []
        while page := await store.replay(sid, paged[-1][0] if paged else 0, limit=7):
            assert len(page) <= 7
            paged += page
        assert paged == replay
        # a client that saw up to seq 60 gets only what came after
        assert all(s > 60 for s in [s for s, _ in await store.replay(sid, 60)])
        with pytest.raises(ReplayGap):
            await store.replay(sid, 10_000)
        # the session ends: its state goes, its transcript and what a viewer needs stay
        info = await store.transcript_info(sid)
        assert (
            info is not None
            and info.view_token == "vt"
            and info.tgt_langs == ["es"]
            and info.ended_at is None
        )
        await store.drop_session(sid)
        assert await store.load_session(sid) is None
        assert len(await store.transcript(sid)) == 40
        info = await store.transcript_info(sid)
        assert info is not None and info.ended_at is not None and info.src_lang == "en"
        assert (info.title, info.presenter) == ("City history", "Ana")  # the transcript's name stays
        assert await store.transcript_info(SessionId("never")) is None
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_an_ended_sessions_transcript_goes_after_the_retention_time(
    kind: str, request: pytest.FixtureRequest
) -> None:
    store = make(kind, request, StoreLimits(transcript_retention=1))
    sid = SessionId(f"brief-{kind}")
    await store.create_session(
        SessionRecord(sid, "t", "rt", "vt", {"src_lang": "en", "tgt_langs": ["es"]}, "A"), 60
    )
    try:
        await store.expect_result(sid, "es", 0)
        await store.push_result(sid, "es", 0, spoken(0))
        await store.drop_session(sid)
        assert len(await store.transcript(sid)) == 1
        await asyncio.sleep(2.2)
        assert await store.transcript(sid) == [] and await store.transcript_info(sid) is None
    finally:
        await store.close()


async def test_drafts_collapse_to_the_latest_and_a_result_ends_them(store: Any) -> None:
    """The window keeps the last word on each draft: a newer draft of an utterance (per
    kind: the transcript so far, a translation so far) takes the older one's place, and
    the utterance's result ends them. The holes are not gaps."""

    def draft(index: int, text: str, tgt: str | None = None) -> bytes:
        msg = p.AsrPartial(utterance_index=index, text=text, tgt_lang=tgt, translation=text if tgt else None)
        return p.encode(msg)

    big = await store.create_session(
        SessionRecord(SessionId("drafty"), "t", "rt", "vt", {"src_lang": "en", "tgt_langs": ["es"]}, "A"), 60
    )
    assert big is None
    sid = SessionId("drafty")
    await store.expect_result(sid, "es", 0)
    await store.append_events(sid, [draft(0, "a"), draft(0, "a b"), draft(0, "uno", "es"), draft(1, "x")])
    await store.append_events(sid, [draft(0, "a b c"), draft(1, "x y"), draft(0, "uno dos", "es")])
    kept = [(s, p.decode_event(d)) for s, d in await store.events_since(sid, 0)]
    assert [(s, e.text) for s, e in kept] == [(5, "a b c"), (6, "x y"), (7, "uno dos")]  # type: ignore[union-attr]
    await store.push_result(sid, "es", 0, res(0))
    kept = [(s, p.decode_event(d)) for s, d in await store.events_since(sid, 0)]
    assert [(s, type(e).__name__) for s, e in kept] == [(6, "AsrPartial"), (8, "TranslationResult")]
    assert [s for s, _ in await store.replay(sid, 0)] == [6, 8]
    assert [s for s, _ in await store.replay(sid, 6)] == [8]


async def test_key_quotas_hold_and_usage_adds_up(store: Any) -> None:
    """Concurrent sessions of a key (a repeat of one counts once; a closed one frees its
    place; one not renewed lapses), audio seconds per clock hour, and usage totals."""
    assert await store.open_key_session("k", "s1", 2, 60)
    assert await store.open_key_session("k", "s1", 2, 60)  # the same session again
    assert await store.open_key_session("k", "s2", 2, 60)
    assert not await store.open_key_session("k", "s3", 2, 60)
    assert await store.open_key_session("other", "s3", 2, 60)  # another key's own count
    await store.close_key_session("k", "s1")
    assert await store.open_key_session("k", "s3", 2, 60)
    assert await store.open_key_session("k2", "x", 1, 0.2)
    await asyncio.sleep(0.4)
    assert await store.open_key_session("k2", "y", 1, 60)  # x lapsed
    hour = 3600.0 * 500_000
    assert await store.charge_key("k", 50.0, 100, hour + 10)
    assert not await store.charge_key("k", 60.0, 100, hour + 20)  # nothing charged
    assert await store.charge_key("k", 50.0, 100, hour + 30)
    assert await store.charge_key("k", 60.0, 100, hour + 3600)  # the next hour
    assert await store.charge_key("k", 1e6, None, hour + 3601)  # no limit
    await store.add_usage("k", sessions=2, utterances=3)
    usage = await store.usage()
    assert usage["k"]["audio_seconds"] == 50 + 50 + 60 + 1e6
    assert usage["k"]["sessions"] == 2 and usage["k"]["utterances"] == 3
    # a session's own usage, on its record while it exists (none made for one that is gone)
    assert await store.charge_key("k", 1.5, None, hour + 3602, 1, 2, session_id=SID)
    assert await store.charge_key("k", 2.0, None, hour + 3603, 1, 2, session_id=SID)
    assert not await store.charge_key("k", 1e9, 10, hour + 3604, 1, 2, session_id=SID)  # refused: not counted
    assert await store.charge_key("k", 2.0, None, hour + 3605, 1, 2, session_id="gone")
    rec = await store.load_session(SID)
    assert rec is not None and rec.usage == {"audio_seconds": 3.5, "utterances": 2, "jobs": 4}
    assert await store.load_session("gone") is None


async def test_rooms_point_at_a_session_and_only_their_key_moves_them(store: Any) -> None:
    mine, other = hashlib.sha256(b"k1").digest(), hashlib.sha256(b"k2").digest()
    assert await store.room("r" * 16) is None
    assert await store.claim_room("r" * 16, RoomRecord(mine, "s-1", "v1"))
    assert await store.claim_room("r" * 16, RoomRecord(mine, "s-2", "v2"))
    assert not await store.claim_room("r" * 16, RoomRecord(other, "s-3", "v3"))
    assert await store.room("r" * 16) == RoomRecord(mine, "s-2", "v2")
    assert await store.claim_room("r" * 16, RoomRecord(mine, "s-1", "v1"))  # s-1 resumed: claimed again
    assert await store.room_sessions("r" * 16) == ["s-1", "s-2"]  # the event's sessions, once each
    assert await store.room_sessions("q" * 16) == []


async def test_listener_languages_are_kept_touched_and_dropped_with_the_session(store: Any) -> None:
    assert await store.listeners(SID) == {}
    await store.touch_listener(SID, "fr", 900.0, 1000.5)
    await store.touch_listener(SID, "de", 950.0, 2000.0)
    await store.touch_listener(SID, "fr", 990.0, 3000.25)  # a viewer still listening: later, since kept
    assert await store.listeners(SID) == {"fr": (900.0, 3000.25), "de": (950.0, 2000.0)}
    await store.expect_result(SID, "fr", 0)  # a listener language's results are ordered too
    await store.drop_session(SID)
    assert await store.listeners(SID) == {}


async def test_results_are_released_in_order(store: Any) -> None:
    for i in (0, 1, 3):  # 2 never existed: it must not block
        await store.expect_result(SID, "es", i)
    assert await store.push_result(SID, "es", 3, res(3)) == []
    assert await store.push_result(SID, "es", 1, res(1)) == []
    ready = await store.push_result(SID, "es", 0, res(0))
    assert [p.decode_event(d).utterance_index for _, d in ready] == [0, 1, 3]  # type: ignore[union-attr]
    assert [s for s, _ in ready] == [1, 2, 3]
    with pytest.raises(AlreadyDelivered):  # a copy of a released result: never appended again
        await store.push_result(SID, "es", 3, res(3))
    with pytest.raises(AlreadyDelivered):
        await store.push_result(SID, "es", 0, res(0))
    with pytest.raises(NotExpected) as unknown:  # an index the ordering state never knew
        await store.push_result(SID, "es", 7, res(7))
    assert not isinstance(unknown.value, AlreadyDelivered)
    assert await store.last_seq(SID) == 3


async def test_a_result_push_ends_its_job_and_releases_its_slot(store: Any) -> None:
    await store.register_node(node("n1", 1), "A")
    n1 = NodeId("n1")
    for i in (0, 1):
        j = JobId(f"j{i}")
        await store.save_job(JobRecord(j, "A", "running", 1, "n1", deadline=time.time() - 1))
        await store.expect_result(SID, "es", i)
    assert await store.reserve(n1, JobId("j0"), 1, 30)
    assert not await store.reserve(n1, JobId("j1"), 1, 30)
    got = await store.append_and_push(SID, [ev(0)], "es", 0, res(0), JobEnd(JobId("j0"), "A", (n1, 1)))
    assert [s for s, _ in got] == [1, 2]
    assert store.nodes().get("n1").reserved == 0  # the mirror learned it from the same step
    assert await store.reserve(n1, JobId("j1"), 1, 30)  # the slot is free again
    claimed = await store.claim_expired_jobs("B", time.time(), live={"B"}, limit=10)
    assert [c.job_id for c in claimed] == ["j1"]  # j0 ended: nothing to take over
    # an index nobody expects: NotExpected, yet the job ends and the events stay
    await store.save_job(JobRecord(JobId("j9"), "A", "running", 1, "n1", deadline=time.time() - 1))
    with pytest.raises(NotExpected):
        await store.append_and_push(SID, [ev(9)], "es", 9, res(9), JobEnd(JobId("j9"), "A"))
    assert [s for s, _ in await store.events_since(SID, 2)] == [3]
    left = await store.claim_expired_jobs("C", time.time(), live={"C"}, limit=10)
    assert [c.job_id for c in left] == ["j1"]  # j9 ended too


async def test_session_record_and_ownership(store: Any) -> None:
    rec = SessionRecord("s-2", "t", "rt", "vt", {"src_lang": "en", "tgt_langs": ["es"]}, "A")
    await store.create_session(rec, 60)
    loaded = await store.load_session(SessionId("s-2"))
    assert loaded is not None and loaded.resume_token == "rt" and loaded.settings["tgt_langs"] == ["es"]
    assert await store.claim_session(SessionId("s-2"), "B", 60) == "A"
    assert await store.session_owner(SessionId("s-2")) == "B"
    await store.set_max_index(SessionId("s-2"), 4)
    assert (await store.load_session(SessionId("s-2"))).max_index == 4  # type: ignore[union-attr]
    assert await store.load_session(SessionId("s-none")) is None
    await store.drop_session(SessionId("s-2"))
    assert await store.load_session(SessionId("s-2")) is None


async def test_only_the_owner_moves_a_job_and_dead_owners_jobs_are_claimed(store: Any) -> None:
    rec = JobRecord("j1", "A", "created", 1, None, deadline=time.time() - 1, data={"x": 1})
    assert await store.save_job(rec)
    assert not await store.save_job(JobRecord("j1", "B", "assigned", 1, "n1", time.time() + 10))
    loaded = await store.load_job(JobId("j1"))
    assert loaded is not None and loaded.owner == "A" and loaded.data == {"x": 1}
    assert await store.claim_expired_jobs("B", time.time(), live={"A", "B"}, limit=10) == []
    claimed = await store.claim_expired_jobs("B", time.time(), live={"B"}, limit=10)
    assert [c.job_id for c in claimed] == ["j1"] and claimed[0].owner == "B"
    again = await store.claim_expired_jobs("C", time.time(), live={"C"}, limit=10)
    assert [c.job_id for c in again] == ["j1"]  # B is not live for C: C takes it over
    await store.finish_job(JobId("j1"), "B")  # B no longer owns it: nothing changes
    assert [c.job_id for c in await store.claim_expired_jobs("D", time.time(), live={"D"}, limit=10)] == [
        "j1"
    ]
    await store.finish_job(JobId("j1"), "D")
    assert await store.claim_expired_jobs("E", time.time() + 100, live={"E"}, limit=10) == []


async def test_a_dead_owners_waiting_jobs_are_claimed_before_their_deadline(store: Any) -> None:
    """After an instance died: its jobs that no node has (``created``) are taken at once with
    ``unplaced``; one at a node waits for its deadline (the node may still send its result)."""
    later = time.time() + 60
    await store.save_job(JobRecord("w1", "A", "created", 1, None, later, {"x": 1}))
    await store.save_job(JobRecord("w2", "A", "dispatched", 1, "n1", later, {"x": 2}))
    assert await store.claim_expired_jobs("B", time.time(), live={"B"}, limit=10) == []
    claimed = await store.claim_expired_jobs("B", time.time(), live={"B"}, limit=10, unplaced=True)
    assert [c.job_id for c in claimed] == ["w1"] and claimed[0].owner == "B"
    assert (await store.load_job(JobId("w2"))).owner == "A"  # type: ignore[union-attr]
    # once its node had its chance to come back with it: every job of the dead owner
    orphans = await store.claim_expired_jobs("B", time.time(), live={"B"}, limit=10, orphaned=True)
    assert [c.job_id for c in orphans] == ["w2"] and orphans[0].owner == "B"


async def test_redis_claims_only_from_an_owner_whose_liveness_expired(redis_url: str) -> None:
    """The caller's view of the live instances may be a moment old: an owner whose key is
    back (restarted under its id) keeps its jobs; its own sweeper takes its previous run's."""
    b, a = RedisStateStore(redis_url), RedisStateStore(redis_url)
    try:
        await a.save_job(JobRecord("r1", "A", "created", 1, None, time.time() - 1, {"x": 1}))
        await a.instance_alive("A", 5)  # A came back after B last looked
        assert await b.claim_expired_jobs("B", time.time(), live={"B"}, limit=10, unplaced=True) == []
        claimed = await a.claim_expired_jobs("A", time.time(), live={"B"}, limit=10, unplaced=True)
        assert [c.job_id for c in claimed] == ["r1"]  # A's own previous run: taken by A itself
    finally:
        await a.close()
        await b.close()


async def test_racing_instances_reserve_the_last_slot_once(redis_url: str) -> None:
    a, b = RedisStateStore(redis_url), RedisStateStore(redis_url)
    try:
        await a.register_node(node("n1", 3), "A")
        await b.refresh_node(NodeId("n1"))
        for round_ in range(100):
            # two slots taken, one left; both instances race for it
            await a.reserve(NodeId("n1"), JobId(f"x{round_}"), 1, 30)
            await a.reserve(NodeId("n1"), JobId(f"y{round_}"), 1, 30)
            wins = await asyncio.gather(
                a.reserve(NodeId("n1"), JobId(f"a{round_}"), 1, 30),
                b.reserve(NodeId("n1"), JobId(f"b{round_}"), 1, 30),
            )
            assert sorted(wins) == [False, True], round_
            for key in ("x", "y", "a", "b"):
                await a.release(NodeId("n1"), JobId(f"{key}{round_}"), 1)
    finally:
        await a.close()
        await b.close()


async def test_a_reservation_hands_its_job_to_the_nodes_instance_in_one_step(redis_url: str) -> None:
    """The reserve script makes A the owner and puts the job into A's inbox at once."""
    b = RedisStateStore(redis_url)
    try:
        await b.register_node(node("n7", 1), "A")
        await b.read_inbox("A", block_ms=1)  # makes A's consumer group
        record = JobRecord("h1", "B", "dispatched", 1, "n7", time.time() + 30)
        handover = Handover("A", b"the job")
        assert await b.reserve(NodeId("n7"), JobId("h1"), 1, 30, record, handover)
        assert handover.sent
        loaded = await b.load_job(JobId("h1"))
        assert loaded is not None and loaded.owner == "A" and loaded.node_id == "n7"
        assert [m for _, m in await b.read_inbox("A", block_ms=100)] == [b"the job"]
        # a full node: nothing is reserved, nothing handed over
        other = Handover("A", b"another job")
        assert not await b.reserve(NodeId("n7"), JobId("h2"), 1, 30, record, other)
        assert not other.sent and await b.read_inbox("A", block_ms=1) == []
        # a job another instance owns now: the slot is taken, the job is not handed over
        await b.save_job(JobRecord("h3", "C", "created", 1, None, time.time() + 30))
        await b.release(NodeId("n7"), JobId("h1"), 1)
        third = Handover("A", b"not ours")
        assert await b.reserve(
            NodeId("n7"), JobId("h3"), 1, 30, JobRecord("h3", "B", "dispatched", 1, "n7", 0), third
        )
        assert not third.sent and (await b.load_job(JobId("h3"))).owner == "C"  # type: ignore[union-attr]
    finally:
        await b.close()


async def test_appends_can_tell_the_sessions_holder_in_the_same_step(store: Any) -> None:
    """Redis: the append scripts write the `session` message (events carried) into the
    holder's inbox; the memory store has no inboxes and leaves ``sent`` unset."""
    from linguamesh.protocol.inbox import SessionEvents, decode_entry

    if isinstance(store, RedisStateStore):
        await store.read_inbox("B", block_ms=1)  # makes B's consumer group
    first = Notify("B", "A.1", "A")
    got = await store.append_events(SID, [ev(0)], first)
    await store.expect_result(SID, "es", 0)
    second = Notify("B", "A.2", "A")
    got += await store.append_and_push(SID, [ev(0)], "es", 0, res(0), None, second)
    assert [s for s, _ in got] == [1, 2, 3]
    if not isinstance(store, RedisStateStore):
        assert not first.sent and not second.sent
        return
    assert first.sent and second.sent
    entries = await store.read_inbox("B", block_ms=100)
    messages = [m for _, raw in entries for m in decode_entry(raw)]
    assert all(isinstance(m, SessionEvents) for m in messages)
    assert [(m.id, m.sender, m.session_id, m.seq) for m in messages if isinstance(m, SessionEvents)] == [
        ("A.1", "A", SID, 1),
        ("A.2", "A", SID, 3),
    ]
    assert [
        (seq, data.encode()) for m in messages if isinstance(m, SessionEvents) for seq, data in m.events
    ] == got
    held = Notify("B", "A.3", "A")
    await store.expect_result(SID, "es", 2)
    await store.expect_result(SID, "es", 1)
    assert await store.push_result(SID, "es", 2, res(2), None, held) == []  # waits for 1
    # no events: the holder is told only of the result held, and keeps a copy of it
    assert held.sent
    (entry,) = await store.read_inbox("B", block_ms=100, ack=[e for e, _ in entries])
    (message,) = decode_entry(entry[1])
    assert isinstance(message, SessionEvents)
    assert (message.id, message.events, message.seq) == ("A.3", [], 0)
    assert [(tgt, index, data.encode()) for tgt, index, data in message.held] == [("es", 2, res(2))]
    released = Notify("B", "A.4", "A")
    out = await store.push_result(SID, "es", 1, res(1), None, released)
    (entry,) = await store.read_inbox("B", block_ms=100, ack=[entry[0]])
    (message,) = decode_entry(entry[1])
    assert isinstance(message, SessionEvents) and message.held == []  # released: no copy to keep
    assert [(seq, data.encode()) for seq, data in message.events] == out and len(out) == 2


def _job(job_id: str, index: int) -> JobRecord:
    return JobRecord(
        job_id, "A", "created", 1, None, deadline=time.time() + 30, data={"utterance_index": index}
    )


async def test_accept_utterance_binds_index_and_request_once(store: Any) -> None:
    """The utterance, its request id, its jobs and the results it will have, in one step;
    a repeat of the index or of the request id is refused and changes nothing."""
    assert await store.accept_utterance(SID, 0, "req-a", [_job("j0", 0)], ["es", "fr"]) is None
    assert await store.accept_utterance(SID, 0, "req-b", [_job("j0b", 0)], ["es"]) == "index"
    assert await store.accept_utterance(SID, 1, "req-a", [_job("j1", 1)], ["es"]) == "request"
    assert await store.load_job(JobId("j0b")) is None and await store.load_job(JobId("j1")) is None
    assert (await store.load_job(JobId("j0"))).data == {"utterance_index": 0}  # type: ignore[union-attr]
    assert (
        await store.lookup_request(SID, "u:0") == "j0" and await store.lookup_request(SID, "r:req-a") == "j0"
    )
    assert await store.accept_utterance(SID, 2, None, [_job("j2", 2)], ["es"]) is None
    # both results of utterance 0 and the one of 2 are expected: released in order, per language
    assert await store.push_result(SID, "es", 2, res(2)) == []
    assert [s for s, _ in await store.push_result(SID, "es", 0, res(0))] == [1, 2]
    assert len(await store.push_result(SID, "fr", 0, res(0))) == 1
    if isinstance(store, RedisStateStore):
        await store.create_session(SessionRecord(SID, "t", "rt", "vt", {}, "A"), 60)
    await store.accept_utterance(SID, 7, None, [_job("j7", 7)], ["es"])
    if isinstance(store, RedisStateStore):
        assert (await store.load_session(SID)).max_index == 7  # type: ignore[union-attr]


async def test_live_instances(store: Any) -> None:
    await store.instance_alive("A", 0.3)
    assert "A" in await store.live_instances()
    if not isinstance(store, RedisStateStore):
        return  # one instance in memory
    await store.instance_alive("B", 5)
    assert await store.live_instances() == {"A", "B"}
    await asyncio.sleep(0.5 * SCALE)
    assert await store.live_instances() == {"B"}  # A's key expired: A is dead


async def test_redis_claim_one_job_only_from_a_dead_owner(redis_url: str) -> None:
    store = RedisStateStore(redis_url)
    try:
        await store.save_job(JobRecord("j1", "A", "dispatched", 2, "n1", time.time() + 60, {"x": 1}))
        assert not await store.claim_job("j1", "B", live={"A", "B"})  # A lives: no
        assert await store.claim_job("j1", "B", live={"B"})
        assert await store.job_owner("j1") == "B"
        assert not await store.claim_job("j1", "C", live={"B", "C"})  # B lives now
        assert not await store.claim_job("nope", "C", live={"C"})  # unknown job
        rec = await store.load_job(JobId("j1"))
        assert rec is not None and rec.attempt_id == 2 and rec.data == {"x": 1}
    finally:
        await store.close()


async def test_redis_restore_session_keeps_its_numbering(redis_url: str, redis_server: Any) -> None:
    store = RedisStateStore(redis_url)
    try:
        rec = SessionRecord(SID, "t", "rt", "vt", {"src_lang": "en"}, "A", max_index=3)
        await store.create_session(rec, 60)
        assert [s for s, _ in await store.append_events(SID, [ev(0), ev(1)])] == [1, 2]
        redis_server.flush()  # Redis restarted empty
        assert await store.load_session(SID) is None
        await store.restore_session(rec, 2, 60)
        assert (await store.load_session(SID)).max_index == 3  # type: ignore[union-attr]
        assert [s for s, _ in await store.append_events(SID, [ev(2)])] == [3]  # no seq is reused
    finally:
        await store.close()


async def test_redis_restore_session_writes_back_the_ordering_state(
    redis_url: str, redis_server: Any
) -> None:
    """What the holder knows of the ordering buffer goes back with the numbering: released
    indices stay refused, held results wait again behind an expected index, and those behind
    nothing expected are released by the restore itself."""
    store = RedisStateStore(redis_url)
    try:
        rec = SessionRecord(SID, "t", "rt", "vt", {"tgt_langs": ["es", "fr"]}, "A", max_index=4)
        await store.create_session(rec, 60)
        for i in range(4):
            await store.expect_result(SID, "es", i)
        await store.expect_result(SID, "fr", 2)
        await store.expect_result(SID, "fr", 3)
        assert len(await store.push_result(SID, "es", 0, res(0))) == 1
        assert await store.push_result(SID, "es", 2, res(2)) == []  # held behind 1
        assert await store.push_result(SID, "es", 3, res(3)) == []
        assert await store.push_result(SID, "fr", 3, res(3)) == []  # held behind fr 2
        redis_server.flush()  # Redis restarted empty: the buffer is gone
        await store.expect_result(SID, "es", 1)  # 1's job runs on: its owner wrote it back
        order = {
            "es": KnownOrder(released={0}, held={2: res(2), 3: res(3)}),
            "fr": KnownOrder(held={3: res(3)}),  # fr 2's job is gone: nothing holds 3 back now
        }
        out = await store.restore_session(rec, 1, 60, order)
        assert [(s, p.decode_event(d).utterance_index) for s, d in out] == [(2, 3)]  # type: ignore[union-attr]
        with pytest.raises(AlreadyDelivered):  # a copy of a released result
            await store.push_result(SID, "es", 0, res(0))
        out = await store.push_result(SID, "es", 1, res(1))
        assert [p.decode_event(d).utterance_index for _, d in out] == [1, 2, 3]  # type: ignore[union-attr]
        assert [s for s, _ in out] == [3, 4, 5]  # numbered on after the restored seq
        again = await store.restore_session(rec, 5, 60, order)  # a second restore: nothing twice
        assert again == []
    finally:
        await store.close()


async def test_redis_sync_nodes_mirrors_the_registry(redis_url: str) -> None:
    a, b = RedisStateStore(redis_url), RedisStateStore(redis_url)
    try:
        await a.register_node(node("n1"), "A")
        await a.register_node(node("n2"), "B")
        await b.sync_nodes({"A", "B"})
        assert {v.node_id for v in b.nodes().all_nodes() if v.online} == {"n1", "n2"}
        assert b.node_owner(NodeId("n2")) == "B"
        await b.sync_nodes({"B"})  # A died: its node is offline for selection
        online = {v.node_id: v.online for v in b.nodes().all_nodes()}
        assert online == {"n1": False, "n2": True}
        await a.remove_node(NodeId("n2"), "B")
        await b.sync_nodes({"A", "B"})
        assert b.nodes().get("n2") is None
    finally:
        await a.close()
        await b.close()


async def test_redis_late_heartbeat_leaves_no_stub_and_a_stub_is_no_node(redis_url: str) -> None:
    """A heartbeat Redis runs after the node's removal (the soak's node-drain) wrote a record
    with only ``hb`` and ``running``: it never expired, and every refresh of that node raised
    KeyError('owner') in the inbox reader."""
    a, b = RedisStateStore(redis_url), RedisStateStore(redis_url)
    try:
        await a.register_node(node("n3"), "A")
        await a.heartbeat(NodeId("n3"), 1, time.monotonic())
        await b.sync_nodes({"A"})
        assert b.nodes().get(NodeId("n3")).running_jobs == 1  # type: ignore[union-attr]
        await a.remove_node(NodeId("n3"), "A")
        await a.heartbeat(NodeId("n3"), 0, time.monotonic())  # late: after the removal
        assert await a.r.exists("sched:v1:node:n3") == 0
        await a.r.hset("sched:v1:node:n3", mapping={"hb": 1, "running": 0})  # a stub from an old version
        assert not await b.refresh_node(NodeId("n3"), {"A"})
        assert b.nodes().get(NodeId("n3")) is None
    finally:
        await a.r.delete("sched:v1:node:n3")
        await a.close()
        await b.close()


async def test_redis_inbox_comes_back_after_redis_lost_its_group(redis_url: str, redis_server: Any) -> None:
    store = RedisStateStore(redis_url)
    try:
        assert await store.read_inbox("B", block_ms=1) == []  # makes B's consumer group
        await store.send_to_instance("B", b"m1")
        got = await store.read_inbox("B", block_ms=100)
        assert [m for _, m in got] == [b"m1"]
        redis_server.flush()  # Redis restarted empty: the stream and its group are gone
        # another instance writes before B noticed: the stream exists, the group does not
        await store.send_to_instance("B", b"sent-after-the-restart")
        assert await store.read_inbox("B", block_ms=1, ack=[got[0][0]]) == []  # NOGROUP: handled
        # the group is made again from the stream's start: what was written meanwhile is read
        got = await store.read_inbox("B", block_ms=100)
        assert [m for _, m in got] == [b"sent-after-the-restart"]
        await store.send_to_instance("B", b"m2")
        assert [m for _, m in await store.read_inbox("B", block_ms=100, ack=[got[0][0]])] == [b"m2"]
    finally:
        await store.close()


async def test_redis_claims_of_one_job_race_to_one_owner(redis_url: str) -> None:
    """A late result arriving at B (claim_job) while C's sweeper claims the same expired job
    of dead A: exactly one of them takes it, and the record names that one."""
    b, c = RedisStateStore(redis_url), RedisStateStore(redis_url)
    try:
        for round_ in range(20):
            job = f"j{round_}"
            await b.save_job(JobRecord(job, "A", "accepted", 1, "n1", time.time() - 1, {"x": round_}))
            won_b, claimed_c = await asyncio.gather(
                b.claim_job(job, "B", live={"B", "C"}),
                c.claim_expired_jobs("C", time.time(), live={"B", "C"}, limit=10),
            )
            won_c = [r.job_id for r in claimed_c] == [job]
            assert won_b != won_c, (round_, won_b, won_c)
            assert await b.job_owner(job) == ("B" if won_b else "C")
            await b.finish_job(JobId(job), "B")
            await c.finish_job(JobId(job), "C")
    finally:
        await b.close()
        await c.close()


async def test_redis_two_instances_claiming_one_session_learn_of_each_other(redis_url: str) -> None:
    """Both claim a session A held: the claims are ordered; the first learns it took over
    from A, the second that it took over from the first (and tells it the session moved)."""
    b, c = RedisStateStore(redis_url), RedisStateStore(redis_url)
    try:
        await b.create_session(SessionRecord(SID, "t", "rt", "vt", {}, "A"), 60)
        prev_b, prev_c = await asyncio.gather(b.claim_session(SID, "B", 60), c.claim_session(SID, "C", 60))
        assert sorted([prev_b, prev_c]) in (["A", "B"], ["A", "C"])
        final = await b.session_owner(SID)
        assert final in ("B", "C") and (prev_c == "B") == (final == "C") and (prev_b == "C") == (final == "B")
    finally:
        await b.close()
        await c.close()


async def test_a_session_whose_numbering_was_lost_is_not_numbered_again_until_restored(store: Any) -> None:
    """Redis restarted empty: an append must not number the session's events from 1 again
    (the client has those numbers); the holder restores the numbering, then it goes on."""
    assert [s for s, _ in await store.append_events(SID, [ev(0), ev(1)])] == [1, 2]
    if isinstance(store, MemoryStateStore):
        pytest.skip("the memory store never loses a session")
    await store.r.flushall()
    with pytest.raises(SessionStateLost):
        await store.append_events(SID, [ev(2)])
    with pytest.raises(SessionStateLost):
        await store.push_result(SID, "es", 0, res(0))
    rec = SessionRecord(SID, "t", "rt", "vt", {"tgt_langs": ["es"]}, "A")
    await store.restore_session(rec, 2, 60)
    assert [s for s, _ in await store.append_events(SID, [ev(2)])] == [3]
    await store.restore_session(rec, 1, 60)  # an older view never turns the numbering back
    assert [s for s, _ in await store.append_events(SID, [ev(3)])] == [4]


async def test_the_reservation_writes_the_jobs_trace_into_its_record(store: Any) -> None:
    """A job taken over from a dead instance continues its trace: the reservation that
    dispatches it writes the trace context into the shared record, which keeps it."""
    n1 = node("n1", 4)
    await store.register_node(n1, "A")
    assert await store.accept_utterance(SID, 0, None, [_job("jt", 0)], ["es"]) is None
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    rec = JobRecord("jt", "A", "dispatched", 1, "n1", time.time() + 30, traceparent=tp)
    assert await store.reserve(NodeId("n1"), JobId("jt"), 1, 30, rec)
    got = await store.load_job(JobId("jt"))
    assert got is not None and got.traceparent == tp and got.data == {"utterance_index": 0}
    # a later reservation (a retry) with no trace keeps the one recorded
    again = JobRecord("jt", "A", "dispatched", 2, "n1", time.time() + 30)
    assert await store.reserve(NodeId("n1"), JobId("jt"), 2, 30, again)
    got = await store.load_job(JobId("jt"))
    assert got is not None and got.traceparent == tp and got.attempt_id == 2
