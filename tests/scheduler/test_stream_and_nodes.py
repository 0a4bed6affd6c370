"""More of the scheduler's parts in-process: the utterance stream (streamed ``audio_chunk``s,
live and buffered), the registry (replaced and silent nodes, routed by the service), the
job observer (notes told apart by kind) and the timers ``Tasks`` owns."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from linguamesh import protocol as p
from linguamesh.core.ids import JobId
from linguamesh.core.lifecycle import Note, NoteKind
from linguamesh.scheduler.service import Scheduler

from ..conftest import eventually, pcm
from .harness import CAPS, FakeSocket, started

STREAMING_CAPS = p.Capabilities(
    asr_languages=["en"], nmt_pairs=[("en", "es")], tts_languages=["es"], streaming=True
)
SILENCE = b"\0\0" * 1600  # 0.1 s at 16 kHz


@pytest.fixture
async def sched() -> AsyncIterator[Scheduler]:
    s = await started(chunk_idle_gap=5.0)
    yield s
    await s.stop()


async def _node(
    sched: Scheduler, node_id: str, caps: p.Capabilities, token: str | None = None
) -> tuple[Any, FakeSocket]:
    sock = FakeSocket()
    msg = p.NodeRegister(
        protocol_version=1,
        node_id=node_id,
        version="test",
        capabilities=caps,
        max_concurrent_jobs=2,
        token=token,
    )
    return await sched.register_node(msg, sock), sock


async def _session(sched: Scheduler, **kw: Any) -> tuple[Any, FakeSocket]:
    sock = FakeSocket()
    init = p.SessionInit(protocol_version=1, src_lang="en", tgt_lang="es", audio_format="pcm16", **kw)
    return await sched.open_session(init, sock), sock


async def _chunk(sched: Scheduler, s: Any, seq: int, audio: bytes, final: bool = False) -> None:
    await sched.audio_chunk(s, p.AudioChunk(seq=seq, audio=audio, is_final=final))


# ---------------------------------------------------------------------- the stream


async def test_a_streamed_utterance_opens_at_speech_streams_and_ends_where_the_node_heard_it(
    sched: Scheduler,
) -> None:
    nc, nsock = await _node(sched, "n1", STREAMING_CAPS)
    s, csock = await _session(sched, end_of_speech="server")
    await _chunk(sched, s, 0, SILENCE * 5)  # silence waits in the pre-roll: no utterance
    assert not nsock.of("job_assign") and s.utterances.max_index == -1
    speech = pcm(0.3)
    await _chunk(sched, s, 1, speech)
    (assign,) = await nsock.wait("job_assign")
    assert assign.get("streaming") is True and assign["utterance_index"] == 0
    assert assign["end_of_speech_ms"] == sched.config.end_of_speech_ms
    first = len(assign["audio"])  # base64 of the speech and a little of the silence before it
    await sched.node_message(nc, p.JobAck(job_id=assign["job_id"], attempt_id=1))
    await _chunk(sched, s, 2, speech)
    await _chunk(sched, s, 1, speech)  # a repeated chunk is dropped
    await _chunk(sched, s, 3, SILENCE * 6)
    audio = await nsock.wait("job_audio", 2)
    assert [a["seq"] for a in audio] == [1, 2] and not any(a.get("is_final") for a in audio)
    assert s.utterances.live is not None and s.utterances.live.open
    # 0.3 s of pre-roll, 0.6 s of speech, 0.6 s of silence: the node heard the speech end
    # 1.0 s in; the utterance ends there and the silence after it waits for speech
    size = int(1.0 * 16000) * 2
    await sched.node_message(nc, p.JobSpeechEnd(job_id=assign["job_id"], attempt_id=1, size=size))
    final = (await nsock.wait("job_audio", 3))[2]
    assert final.get("is_final") is True and final["size"] == size and final["seq"] == 3
    assert s.utterances.live is None and first > 0
    job = sched.runner.runs[JobId(assign["job_id"])].job
    assert len(job.audio) == size
    # the silence after the cut waits for speech again; speech opens utterance 1
    await _chunk(sched, s, 4, speech)
    assign1 = (await nsock.wait("job_assign", 2))[1]
    assert assign1["utterance_index"] == 1 and assign1.get("streaming") is True
    assert not csock.of("error")


async def test_without_a_streaming_node_chunks_become_one_whole_utterance(sched: Scheduler) -> None:
    _nc, nsock = await _node(sched, "n1", CAPS)  # not a streaming node
    s, _csock = await _session(sched)
    for seq in range(3):
        await _chunk(sched, s, seq, pcm(0.2))
    assert not nsock.of("job_assign")  # buffered until the utterance ends
    await _chunk(sched, s, 3, b"", final=True)
    (assign,) = await nsock.wait("job_assign")
    assert not assign.get("streaming") and assign["utterance_index"] == 0
    job = sched.runner.runs[JobId(assign["job_id"])].job
    assert job.audio == pcm(0.2) * 3
    with pytest.raises(p.ProtocolError) as err:  # an odd byte count is refused (the socket handler
        await _chunk(sched, s, 4, b"\0", final=True)  # sends the error), the session goes on
    assert err.value.code is p.ErrorCode.BAD_AUDIO
    await _chunk(sched, s, 4, pcm(0.1), final=True)
    assert (await nsock.wait("job_assign", 2))[1]["utterance_index"] == 1


async def test_a_refused_streamed_utterance_is_dropped_and_the_next_chunk_tries_again(
    sched: Scheduler,
) -> None:
    _nc, nsock = await _node(sched, "n1", STREAMING_CAPS)
    s, _csock = await _session(sched)
    s.utterances.max_index = 5
    # the client had sent utterance 5 whole: a streamed one is index 6, but the store says
    # 6 exists already (a duplicate) -> the intake refuses to open it, nothing is assigned
    await sched.store.accept_utterance(s.session_id, 6, None, [], ["es"])
    await _chunk(sched, s, 0, pcm(0.2), final=True)
    assert not nsock.of("job_assign") and s.utterances.live is None
    seg = s.utterances.segmenter
    assert seg is not None and not seg.open
    s.utterances.max_index = 6
    await _chunk(sched, s, 1, pcm(0.2))
    (assign,) = await nsock.wait("job_assign")
    assert assign["utterance_index"] == 7


# ---------------------------------------------------------------------- the registry, routed by the service


async def test_a_second_connection_under_a_node_id_is_refused_without_its_own_token(sched: Scheduler) -> None:
    await _node(sched, "n1", CAPS)
    with pytest.raises(p.ProtocolError) as err:
        await _node(sched, "n1", CAPS)
    assert err.value.code is p.ErrorCode.NODE_ID_IN_USE


async def test_a_silent_node_is_made_gone_by_the_service_and_its_job_fails_over(sched: Scheduler) -> None:
    n1, s1 = await _node(sched, "n1", CAPS)
    s, _csock = await _session(sched)
    await sched.utterance(s, p.Utterance(utterance_index=0, audio=pcm(0.2)))
    (assign,) = await s1.wait("job_assign")
    _n2, s2 = await _node(sched, "n2", CAPS)
    n1.last_seen -= 1000  # n1 missed its heartbeats
    assert sched.registry.silent() == [n1]
    await eventually(lambda: bool(s2.of("job_assign")), 5, "the job to fail over to n2")
    assert "n1" not in sched.nodes and s1.closed is not None and s1.closed[0] == 4002
    assert s2.of("job_assign")[0]["job_id"] == assign["job_id"]


# ---------------------------------------------------------------------- the observer


async def test_the_observer_tells_notes_apart_by_kind(sched: Scheduler) -> None:
    _n1, _s1 = await _node(sched, "n1", CAPS)
    s, _ = await _session(sched)
    await sched.utterance(s, p.Utterance(utterance_index=0, audio=pcm(0.2)))
    (run,) = sched.runner.runs.values()
    m = sched.metrics
    obs = sched.runner.observer
    obs.note(
        run, Note(run.job.job_id, NoteKind.FAILOVER, (("reason", "rejected: full"), ("from_node", "n1")))
    )
    obs.note(run, Note(run.job.job_id, NoteKind.ACK_TIMEOUT, (("node_id", "n1"),)))
    obs.note(run, Note(run.job.job_id, NoteKind.STALE_EVENT, (("what", "ack"),)))
    obs.note(run, Note(run.job.job_id, NoteKind.RESULT_DUPLICATE, (("attempt_id", 1),)))
    assert m.value("failovers", reason="rejected") == 1  # the reason's code, not its detail
    assert m.value("timeouts", kind="ack") == 1
    assert m.value("results_duplicate") == 1
    assert m.value("timeouts") == 1 and m.value("failovers") == 1  # a stale event counts nowhere
    assert NoteKind.ACK_TIMEOUT.timeout == "ack" and NoteKind.FAILOVER.timeout is None


# ---------------------------------------------------------------------- timers


async def test_stop_cancels_the_timers_tasks_own() -> None:
    sched = await started(session_linger=60.0)
    s, sock = await _session(sched)
    sched.connection_closed(s, sock)
    timer = s.linger_timer
    assert timer is not None and not timer.cancelled()
    await sched.stop()
    assert timer.cancelled()


async def test_a_failed_resume_that_took_the_socket_away_leaves_the_session_lingering(
    sched: Scheduler,
) -> None:
    s, sock1 = await _session(sched)
    bad = p.ResumeInfo(session_id=s.session_id, resume_token=s.resume_token, last_seq=99)
    with pytest.raises(p.ProtocolError) as err:  # events the client says it has do not exist
        await sched.resume_session(bad, FakeSocket())
    assert err.value.code is p.ErrorCode.BAD_MESSAGE
    assert sock1.closed is not None and sock1.closed[0] == 4000  # the old socket was let go
    assert s.delivery.conn is None and s.life.state.value == "detached" and s.linger_timer is not None
    good = p.ResumeInfo(session_id=s.session_id, resume_token=s.resume_token, last_seq=0)
    resumed, _ = await sched.resume_session(good, FakeSocket())
    assert resumed is s and s.linger_timer is None and s.life.state.value == "attached"


class _StallingSocket(FakeSocket):
    """A node's socket whose writes stop getting through (a node that stopped reading:
    the registry's write times out), from ``stall`` on."""

    stall = False

    async def send_text(self, data: str) -> None:
        if self.stall:
            raise TimeoutError("the node stopped reading")
        await super().send_text(data)


async def test_a_piece_of_speech_that_cannot_reach_its_node_fails_the_job_over_with_all_of_it(
    sched: Scheduler,
) -> None:
    """The job's node stops taking writes mid-utterance: the piece is not dropped (the node
    would transcribe speech with a hole); the job fails over, and the next node gets the
    whole utterance so far and the rest of it."""
    stalled = _StallingSocket()
    msg = p.NodeRegister(
        protocol_version=1, node_id="n1", version="test", capabilities=STREAMING_CAPS, max_concurrent_jobs=2
    )
    n1 = await sched.register_node(msg, stalled)
    s, csock = await _session(sched)
    speech = pcm(0.3)
    await _chunk(sched, s, 0, speech)
    (assign,) = await stalled.wait("job_assign")
    assert assign.get("streaming") is True
    await sched.node_message(n1, p.JobAck(job_id=assign["job_id"], attempt_id=1))
    _n2, healthy = await _node(sched, "n2", STREAMING_CAPS)
    stalled.stall = True
    await _chunk(sched, s, 1, speech)  # cannot reach n1
    (again,) = await healthy.wait("job_assign")
    assert (again["job_id"], again["attempt_id"]) == (assign["job_id"], 2)
    sent = base64.b64decode(again["audio"])
    assert len(sent) == 2 * len(speech), "the new attempt starts with everything spoken so far"
    await _chunk(sched, s, 2, speech, final=True)
    await eventually(lambda: any(a.get("is_final") for a in healthy.of("job_audio")))
    rest = [base64.b64decode(a.get("audio") or "") for a in healthy.of("job_audio")]
    assert sum(map(len, rest)) == len(speech)  # the rest of the utterance, once
    assert not csock.of("error")


async def test_a_chunk_that_comes_while_a_cut_opens_the_next_utterance_reaches_its_job(
    sched: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node proposes a cut after a sentence: its message closes utterance 0 and opens
    utterance 1 with the speech after the cut. The opening awaits the store (here the
    listener languages' read); a chunk the speaker sends meanwhile belongs to utterance 1
    and reaches its job: no piece is missing (the node would fail the job on a hole)."""
    import asyncio

    nc, nsock = await _node(sched, "n1", STREAMING_CAPS)
    s, csock = await _session(sched, end_of_speech="server")
    speech = pcm(0.3)
    for seq in range(4):
        await _chunk(sched, s, seq, speech)
    (assign,) = await nsock.wait("job_assign")
    await sched.node_message(nc, p.JobAck(job_id=assign["job_id"], attempt_id=1))
    await nsock.wait("job_audio", 3)
    store = sched.store
    read = store.listeners

    async def slow_read(session_id: Any) -> Any:
        await asyncio.sleep(0.03)
        return await read(session_id)

    monkeypatch.setattr(store, "listeners", slow_read)
    s.listeners_read_at = float("-inf")  # a read is due at the next opening
    cut = int(0.8 * 16000) * 2  # a sentence ends 0.8 s in: 0.4 s after it go to utterance 1
    proposal = asyncio.create_task(
        sched.node_message(
            nc, p.JobSpeechEnd(job_id=assign["job_id"], attempt_id=1, size=cut, reason="sentence")
        )
    )
    await asyncio.sleep(0.01)  # utterance 1 is opening: it waits for the read
    await _chunk(sched, s, 4, speech)  # the speaker goes on meanwhile
    await proposal
    await _chunk(sched, s, 5, speech)
    assign1 = (await nsock.wait("job_assign", 2))[1]
    assert assign1["utterance_index"] == 1 and assign1.get("streaming") is True
    await sched.node_message(nc, p.JobAck(job_id=assign1["job_id"], attempt_id=1))
    await _chunk(sched, s, 6, b"", final=True)
    await eventually(
        lambda: any(a.get("is_final") for a in nsock.of("job_audio") if a["job_id"] == assign1["job_id"]),
        2,
        "utterance 1's end",
    )
    pieces = [a for a in nsock.of("job_audio") if a["job_id"] == assign1["job_id"]]
    seqs = [a["seq"] for a in pieces]
    assert seqs == list(range(assign1["audio_seq"], assign1["audio_seq"] + len(seqs))), seqs  # no hole
    heard = len(base64.b64decode(assign1["audio"])) + sum(
        len(base64.b64decode(a.get("audio", ""))) for a in pieces
    )
    assert heard == 4 * len(speech) - cut + 2 * len(speech), heard  # every byte after the cut, once
    assert not csock.of("error")
