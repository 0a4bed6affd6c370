"""Streaming jobs through a real scheduler and nodes with the test engines:
the job starts at the first ``audio_chunk``, the node decodes while the audio arrives,
and failover, non-streaming nodes and several target languages lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, eventually, pcm, test_engines

CHUNK = 0.02  # seconds of audio per chunk, as the web page sends


@contextlib.asynccontextmanager
async def collecting(c: SessionClient) -> AsyncIterator[list[p.SessionEvent]]:
    """Every event the client receives, read in the background."""
    events: list[p.SessionEvent] = []

    async def read() -> None:
        while True:
            events.append(await c.recv(None))

    task = asyncio.create_task(read())
    try:
        yield events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def stream(c: SessionClient, seconds: float, first_seq: int = 0, pace: float = 0.01) -> int:
    """``seconds`` of audio as 20 ms chunks, one every ``pace`` seconds; the next seq."""
    n = round(seconds / CHUNK)
    for i in range(n):
        await c.send_chunk(first_seq + i, pcm(CHUNK))
        await asyncio.sleep(pace)
    return first_seq + n


def results(events: list[p.SessionEvent]) -> list[p.TranslationResult]:
    return [e for e in events if isinstance(e, p.TranslationResult)]


async def test_a_streamed_utterance_is_decoded_while_it_arrives(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    node = await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c, collecting(c) as events:
        seq = await stream(c, 3.0)  # (an utterance's first words wait for 1 s after them)
        await eventually(
            lambda: any(isinstance(e, p.AsrPartial) and (e.stable or 0) >= 14 for e in events),
            5 * SCALE,
            "the words before the last committed",
        )
        before_end = list(events)
        await c.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 1, 5 * SCALE, "the result")
    partials = [e for e in before_end if isinstance(e, p.AsrPartial)]
    # committed words come before the end of speech, and never change afterwards
    stable = [e for e in partials if e.stable]
    assert stable[-1].text[: stable[-1].stable] == "test utterance"
    assert all("test utterance".startswith(e.text[: e.stable]) for e in stable)
    (r,) = results(events)
    assert r.status == "ok" and r.utterance_index == 0
    assert r.text_asr == "Test utterance 3.00."  # every chunk, once: 3.00 s of audio
    assert r.text_translated == "[es] Test utterance 3.00." and r.tts_audio
    drafts = [e for e in events if isinstance(e, p.AsrPartial) and e.translation]
    assert drafts and drafts[-1].translation == "[es] Test utterance 3.00." and drafts[-1].tgt_lang == "es"
    assert events.index(drafts[-1]) < events.index(r)
    assert node.agent.metrics  # the node ran it as a streaming job:
    assert s.sched.runner.finished and all(j.attempt_id == 1 for j in s.sched.runner.finished.values())


async def test_a_node_without_streaming_still_serves_streamed_sessions(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, streaming=False)
    async with SessionClient(s.url, src="en", tgt="es") as c, collecting(c) as events:
        seq = await stream(c, 1.0)
        await c.send_chunk(seq, pcm(CHUNK), is_final=True)
        seq = await stream(c, 0.5, seq + 1)
        await c.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 2, 5 * SCALE, "both results")
    first, second = results(events)
    assert (first.utterance_index, first.text_asr) == (0, "Test utterance 1.02.")
    assert (second.utterance_index, second.text_asr) == (1, "Test utterance 0.50.")
    # whole-utterance jobs: the test engine's one draft, no stable part
    assert all(e.stable is None for e in events if isinstance(e, p.AsrPartial))


async def test_a_node_lost_mid_stream_the_next_attempt_gets_all_audio_so_far(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    a = await cluster.node(s.url, "node-a")
    b = await cluster.node(s.url, "node-b")
    async with SessionClient(s.url, src="en", tgt="es") as c, collecting(c) as events:
        seq = await stream(c, 1.0)
        assigned = [e for e in events if isinstance(e, p.JobStatus) and e.status == "assigned"]
        holder = a if assigned[0].node_id == "node-a" else b
        await holder.stop()  # its socket closes: the job fails over with the audio so far
        seq = await stream(c, 1.0, seq)
        await c.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 1, 10 * SCALE, "the result")
        await asyncio.sleep(0.3)  # no second result follows
    (r,) = results(events)
    assert r.status == "ok" and r.text_asr == "Test utterance 2.00.", r  # nothing lost, nothing doubled
    assert r.node_id != holder.agent.node_id
    (job,) = s.sched.runner.finished.values()
    assert job.attempt_id == 2


async def test_every_target_language_streams_and_gets_its_result(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with (
        SessionClient(s.url, src="en", tgt="es", extra_tgt_langs=["fr"]) as c,
        collecting(c) as events,
    ):
        seq = await stream(c, 1.5)
        await c.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 2, 5 * SCALE, "both results")
    got = sorted((r.tgt_lang, r.text_translated) for r in results(events))
    assert got == [("es", "[es] Test utterance 1.50."), ("fr", "[fr] Test utterance 1.50.")]
    # one transcript draft per utterance (the first target's job), a translation draft per target
    assert {e.tgt_lang for e in events if isinstance(e, p.AsrPartial) and e.translation} == {"es", "fr"}
    assert not [
        e for e in events if isinstance(e, p.AsrPartial) and e.stable is None and e.translation is None
    ]


async def test_a_streamed_utterance_with_four_targets_is_heard_once_and_survives_its_node(
    cluster: Cluster,
) -> None:
    """Four target languages, two nodes: an utterance's four streaming jobs go to one node,
    which decodes the speech once for them (the others follow that hearing). Its node is
    lost mid-utterance: all four fail over with the audio so far; one result per
    (utterance, language), with every chunk once."""
    s = await cluster.scheduler()
    langs = ["en", "es", "fr", "de", "it"]
    nodes = {
        n: await cluster.node(s.url, n, engines=test_engines(languages=langs), max_concurrent_jobs=8)
        for n in ("node-a", "node-b")
    }
    targets = ("es", "fr", "de", "it")
    async with (
        SessionClient(s.url, src="en", tgt="es", extra_tgt_langs=["fr", "de", "it"]) as c,
        collecting(c) as events,
    ):
        seq = await stream(c, 1.5)
        await c.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 4, 10 * SCALE, "the first utterance's results")
        first = results(events)
        (holder,) = {r.node_id for r in first}  # siblings together
        held = nodes[holder].agent.transcripts
        assert (held.runs, held.shared) == (1, 3)  # heard once for four targets
        # the second utterance: its node goes mid-stream
        seq = await stream(c, 1.0, seq + 1)
        busy = {n: a for n, a in nodes.items() if a.agent.running}
        assert len(busy) == 1, busy
        ((gone, lost),) = busy.items()
        assert len(lost.agent.running) == 4
        other = nodes[next(iter(set(nodes) - {gone}))].agent.transcripts
        before = (other.runs, other.shared)
        await lost.stop()
        seq = await stream(c, 1.0, seq)
        await c.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 8, 10 * SCALE, "the second utterance's results")
        await asyncio.sleep(0.3)  # nothing doubled follows
    got = results(events)
    keys = sorted((r.utterance_index, r.tgt_lang) for r in got)
    assert keys == sorted((i, t) for i in range(2) for t in targets)  # 0 lost, 0 doubled
    second = [r for r in got if r.utterance_index == 1]
    assert {r.text_asr for r in second} == {"Test utterance 2.00."}  # every chunk, once
    assert sorted(r.text_translated for r in second) == sorted(f"[{t}] Test utterance 2.00." for t in targets)
    assert {r.node_id for r in second} == set(nodes) - {gone}
    assert (other.runs - before[0], other.shared - before[1]) == (1, 3)  # heard once there too


async def test_streaming_can_be_turned_off_on_the_scheduler(cluster: Cluster) -> None:
    s = await cluster.scheduler(streaming=False)
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c, collecting(c) as events:
        seq = await stream(c, 1.0)
        assert not [e for e in events if isinstance(e, p.JobStatus)]  # no job before the end
        await c.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 1, 5 * SCALE, "the result")
    assert results(events)[0].text_asr == "Test utterance 1.00."
