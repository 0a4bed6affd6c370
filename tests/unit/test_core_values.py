"""Small parts of the core, value for value: token buckets, result authority, ids,
language codes, the event history's edges, illegal transitions."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linguamesh.core import ids
from linguamesh.core.history import EventHistory, ReplayGap
from linguamesh.core.ids import NodeId
from linguamesh.core.jobs import IllegalTransition, JobState
from linguamesh.core.languages import is_known, pair_problem
from linguamesh.core.ratelimit import TokenBucket

from .test_jobs_and_stages import make_job

N1, N2 = NodeId("n1"), NodeId("n2")


def test_a_bucket_starts_full_refills_at_its_rate_and_caps_at_its_burst() -> None:
    b = TokenBucket(rate=2.0, burst=5.0, stamp=10.0)
    assert b.tokens == 5.0 and b.full(10.0)
    assert b.take(5.0, 10.0) and b.tokens == 0.0
    assert not b.take(0.5, 10.0) and b.tokens == 0.0  # refused: nothing taken
    assert b.wait_for(1.0, 10.0) == 0.5  # 1 token at 2/s
    assert b.take(1.0, 10.5) and b.tokens == 0.0  # exactly enough is enough
    assert not b.full(11.0) and b.tokens == 1.0
    assert b.full(100.0) and b.tokens == 5.0  # never more than the burst
    assert b.wait_for(6.0, 100.0) == float("inf")  # more than a burst never fits
    assert b.wait_for(5.0, 100.0) == 0.0
    b.take(1.0, 50.0)  # a clock read out of order does not refill backwards or twice
    assert b.tokens == 4.0 and b.stamp == 100.0


def test_a_bucket_given_tokens_keeps_them_and_a_zero_rate_never_refills() -> None:
    assert TokenBucket(1.0, 5.0, tokens=0.0).tokens == 0.0
    assert TokenBucket(1.0, 5.0, tokens=0.5).tokens == 0.5
    assert TokenBucket(1.0, 5.0).tokens == 5.0
    frozen = TokenBucket(rate=0.0, burst=2.0, tokens=0.0, stamp=0.0)
    assert frozen.wait_for(1.0, 100.0) == float("inf") and not frozen.take(1.0, 100.0)


def test_only_an_attempts_own_node_may_answer_for_it() -> None:
    job = make_job()
    job.attempt_nodes = {1: N1, 3: N2}
    job.attempt_id = 3
    assert job.authorized(N1, 1) and job.authorized(N2, 3)
    assert not job.authorized(N2, 1) and not job.authorized(N1, 3)
    # attempt 2 was made before this instance held the job: its node is an excluded one
    job.excluded = {N1}
    assert job.authorized(N1, 2) and not job.authorized(N2, 2)
    for attempt in (0, -1, 4):  # never made
        assert not job.authorized(N1, attempt)
    job.attempt_nodes = {}
    assert job.authorized(N1, 1) and not job.authorized(N1, 3)  # the current one needs a record


def test_ids_have_their_shapes_and_do_not_repeat() -> None:
    jobs = {ids.new_job_id() for _ in range(200)}
    sessions = {ids.new_session_id() for _ in range(200)}
    assert len(jobs) == 200 and len(sessions) == 200
    assert all(re.fullmatch(r"job-[0-9A-F]{12}", j) for j in jobs)
    assert all(re.fullmatch(r"s-[0-9A-F]{12}", s) for s in sessions)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", ids.new_trace_id())
    tokens = {ids.new_token() for _ in range(50)}
    assert len(tokens) == 50 and all(len(t) == 32 and re.fullmatch(r"[\w-]+", t) for t in tokens)


def test_language_codes() -> None:
    for code in ("en", "zh", "pt-BR", "zh_Hans", "es-419", "sr-Latn"):
        assert is_known(code), code
    for code in ("", "xx", "EN", "eng", "en-", "en-b", "en-BRA", "e", "en-US-x"):
        assert not is_known(code), code
    assert pair_problem("en", "es") is None
    assert (
        pair_problem("xx", "es") == "src_lang 'xx' is not a known language code (ISO 639-1, e.g. 'en', 'zh')"
    )
    assert pair_problem("en", "klingon") == (
        "tgt_lang 'klingon' is not a known language code (ISO 639-1, e.g. 'en', 'zh')"
    )


def test_history_edges() -> None:
    h: EventHistory[str] = EventHistory(max_events=3)
    assert h.since(0) == []
    with pytest.raises(ReplayGap, match=r"last_seq 1 is ahead of the session \(0\)"):
        h.since(1)
    for seq in range(1, 6):
        h.append(seq, f"e{seq}")
    assert h.since(5) == [] and h.since(2) == [(3, "e3"), (4, "e4"), (5, "e5")]
    with pytest.raises(ReplayGap, match=r"events 2\.\.2 are no longer kept"):
        h.since(1)
    with pytest.raises(ReplayGap, match=r"events 1\.\.2 are no longer kept"):
        h.since(0)
    h.ack(3)
    assert h.since(3) == [(4, "e4"), (5, "e5")] and len(h) == 2
    h.ack(5)
    assert len(h) == 0 and h.since(5) == []
    with pytest.raises(ReplayGap, match=r"events 5\.\.5 are no longer kept"):
        h.since(4)


def test_an_illegal_transition_names_the_job_and_both_states() -> None:
    job = make_job()
    job.transition(JobState.CANCELLED, 1.0)
    with pytest.raises(IllegalTransition) as err:
        job.transition(JobState.RUNNING, 2.0)
    assert (err.value.src, err.value.dst) == (JobState.CANCELLED, JobState.RUNNING)
    assert str(err.value) == "job job-1: illegal transition cancelled -> running"


def test_capabilities_offers_languages_pairs_and_pools() -> None:
    from linguamesh.core.nodes import NodeCapabilities, pool_languages, pool_name
    from linguamesh.core.stages import Requirement, requirements

    caps = NodeCapabilities(
        asr=frozenset({"en"}), repair=frozenset({"de"}), nmt=frozenset({("en", "fr"), ("it", "en")}),
        tts=frozenset({"es"}),
    )  # fmt: skip
    assert caps.offers(Requirement("repair", ("de",))) and not caps.offers(Requirement("repair", ("en",)))
    assert caps.offers(Requirement("asr", ("en",))) and not caps.offers(Requirement("asr", ("de",)))
    assert caps.offers(Requirement("nmt", ("en", "fr"))) and not caps.offers(Requirement("nmt", ("fr", "en")))
    assert caps.offers(Requirement("tts", ("es",))) and not caps.offers(Requirement("unknown", ("en",)))
    assert caps.languages() == {"en", "de", "fr", "it", "es"}
    assert caps.servable_pairs() == {("en", "fr"), ("en", "en")}  # it->en needs asr(it)
    # the pool is the languages of the pairs served end to end, not all the engines touch
    assert pool_name(caps) == "en-fr" and pool_languages("en-fr") == {"en", "fr"}
    assert pool_name(NodeCapabilities()) == "empty" and pool_languages("empty") == frozenset()
    assert requirements(("asr", "repair", "nmt", "tts"), "en", "es") == (
        Requirement("asr", ("en",)), Requirement("repair", ("en",)), Requirement("nmt", ("en", "es")),
        Requirement("tts", ("es",)),
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown stage 'vad'"):
        requirements(("vad",), "en", "es")


def test_history_ack_drops_exactly_up_to_the_seq() -> None:
    h: EventHistory[str] = EventHistory()
    for seq in range(1, 5):
        h.append(seq, f"e{seq}")
    h.ack(2)
    assert h.since(2) == [(3, "e3"), (4, "e4")] and len(h) == 2
    with pytest.raises(ValueError, match="seq 4 is not after 4"):
        h.append(4, "again")


def test_ordered_stream_initial_state_and_errors() -> None:
    from linguamesh.core.ordering import DuplicateIndex, NotExpected, OrderedStream

    stream: OrderedStream[str] = OrderedStream()
    assert stream.delivered_up_to == -1 and stream.pending == 0
    stream.expect(0)  # index 0 is not below any floor
    assert stream.pending == 1
    with pytest.raises(NotExpected, match="index 5 was not expected or already completed"):
        stream.complete(5, "x")
    assert stream.complete(0, "a") == ["a"] and stream.delivered_up_to == 0
    with pytest.raises(DuplicateIndex) as dup:
        stream.expect(0)
    assert dup.value.args == (0,)
    stream.expect(3)
    assert stream.complete(3, "c") == ["c"] and stream.delivered_up_to == 3


def test_codec_edges() -> None:
    from linguamesh import protocol as p

    ack = p.encode_str(p.Ack(seq=1))
    assert ack == '{"type":"ack","seq":1}'
    assert p.decode_client(ack, max_bytes=len(ack)) == p.Ack(seq=1)  # exactly the limit is fine
    with pytest.raises(p.ProtocolError) as err:
        p.decode_client(ack, max_bytes=len(ack) - 1)
    assert err.value.code is p.ErrorCode.AUDIO_TOO_LARGE
    assert err.value.message == f"frame of {len(ack)} bytes exceeds the limit of {len(ack) - 1} bytes"
    cases = {
        '{"seq": 1}': "Object missing required field `type`",
        '{"type": null}': "missing field `type`",
        '{"type": "teleport"}': "unknown message type 'teleport' (field `type`)",
        "[1, 2]": "a frame must be one JSON object",
        '{"type":"ack","seq":1,"x":' + "[" * 5000 + "]" * 5000 + "}": "frame nests arrays/objects too deeply",
    }
    for frame, message in cases.items():
        with pytest.raises(p.ProtocolError) as err:
            p.decode_client(frame)
        assert (err.value.code, err.value.message) == (p.ErrorCode.BAD_MESSAGE, message), frame
    with pytest.raises(p.ProtocolError) as err:
        p.decode_client('{"type":"utterance","utterance_index":0,"audio":"***"}')
    assert (err.value.code, err.value.message) == (p.ErrorCode.BAD_AUDIO, "field `audio` is not valid base64")
    with pytest.raises(p.ProtocolError) as err:  # base64 trouble in a field that is not audio
        p.decode_client('{"type":"utterance","utterance_index":"base64","audio":""}')
    assert err.value.code is p.ErrorCode.BAD_MESSAGE
    assert p.event_type(p.encode(p.SessionClosed(reason="x"))) == "session_closed"
    assert (
        p.with_seq(p.encode(p.SessionClosed(reason="x")), 7)
        == b'{"type":"session_closed","seq":7,"reason":"x"}'
    )
    e = p.ProtocolError(p.ErrorCode.RATE_LIMITED, "slow down", ref="utterance 3")
    assert (str(e), e.ref, e.fatal) == ("rate_limited: slow down", "utterance 3", False)


def test_a_slow_bucket_still_tells_when_to_come_back() -> None:
    b = TokenBucket(rate=0.5, burst=2.0, tokens=0.0, stamp=0.0)
    assert b.wait_for(1.0, 0.0) == 2.0  # half a token a second


def test_breakdown_counts_each_reason_and_sampling_is_bounded() -> None:
    import random

    from linguamesh.core.selection import Breakdown, Reason, select_pooled

    from .test_selection import index, node, req

    b = Breakdown()
    for reason in (Reason.EXCLUDED, Reason.EXCLUDED, Reason.OFFLINE):
        b.add(reason)
    assert b.counts == {Reason.EXCLUDED: 2, Reason.OFFLINE: 1}
    nodes = [node(f"x{i}", ["en", "es"]) for i in range(20)]
    out = select_pooled(index(*nodes), req(excluded=frozenset(n.node_id for n in nodes)), random.Random(0))
    assert out.candidates == [] and out.breakdown.considered == 16  # the sample budget
    assert out.breakdown.counts == {Reason.EXCLUDED: 16}
    nothing = select_pooled(index(), req(), random.Random(0))
    assert nothing.candidates == [] and nothing.eligible_pools == [] and nothing.attempts == 0


def test_audio_of_the_wrong_type_is_a_bad_message_not_bad_audio() -> None:
    from linguamesh import protocol as p

    with pytest.raises(p.ProtocolError) as err:
        p.decode_client('{"type":"utterance","utterance_index":0,"audio":5}')
    assert err.value.code is p.ErrorCode.BAD_MESSAGE and "audio" in err.value.message
    with pytest.raises(p.ProtocolError) as err:
        p.check_version(2)
    assert err.value.message == "protocol_version 2 is not supported; this server speaks 1"


@given(st.lists(st.booleans(), max_size=400), st.integers(2, 60))
def test_split_points_bound_every_part_and_prefer_silence(voiced: list[bool], max_frames: int) -> None:
    from linguamesh.audio import split_points

    cuts = split_points(voiced, max_frames)
    if not voiced:
        assert cuts == []
        return
    edges = [0, *cuts, len(voiced)]
    assert all(b > a for a, b in itertools.pairwise(edges))  # increasing, no empty part
    assert all(b - a <= max_frames for a, b in itertools.pairwise(edges))
    for a, cut in zip(edges, cuts, strict=False):
        later = voiced[a + max_frames // 2 : a + max_frames]
        if not all(later):  # there was silence to cut in: the cut is in silence
            assert not voiced[cut] or not voiced[cut - 1]


def test_split_points_cut_long_speech_in_its_pauses() -> None:
    from linguamesh.audio import split_points

    speech, pause = [True] * 40, [False] * 10
    voiced = speech + pause + speech + pause + speech  # 140 frames, pauses at 40-49 and 90-99
    assert split_points(voiced, 100) == [95]  # the later pause, the longest in the window's later half
    assert split_points(voiced, 60) == [45, 95]
    assert split_points([True] * 25, 10) == [10, 20]  # no silence at all: cut at the limit


def test_latency_percentiles_are_nearest_rank() -> None:
    from linguamesh.scheduler.overview import latency_summary

    assert latency_summary([]) == {"jobs": 0, "p50": None, "p90": None, "p99": None}
    assert latency_summary([5.0]) == {"jobs": 1, "p50": 5.0, "p90": 5.0, "p99": 5.0}
    hundred = [float(x) for x in range(100, 0, -1)]  # 1..100, in any order
    assert latency_summary(hundred) == {"jobs": 100, "p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert latency_summary([1.0, 2.0, 3.0])["p50"] == 2.0
