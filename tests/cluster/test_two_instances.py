"""Many scheduler instances on one real redis-server, with real sockets."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.state.redis import RedisStateStore

from ..conftest import (
    SCALE,
    Cluster,
    eventually,
    late_events,
    of,
    pcm,
    receive_until,
    test_engines,
    transcript_lines,
    until_result,
)


async def two(cluster: Cluster, redis_url: str, **cfg: Any) -> tuple[Any, Any]:
    a = await cluster.scheduler(instance_id="A", store=RedisStateStore(redis_url), **cfg)
    b = await cluster.scheduler(instance_id="B", store=RedisStateStore(redis_url), **cfg)
    return a, b


async def node_on_a(cluster: Cluster, redis_url: str, delay_ms: int) -> tuple[Any, Any]:
    """Instances A and B, node ``node-on-a`` connected to A and known to B."""
    a, b = await two(cluster, redis_url)
    await cluster.node(a.url, "node-on-a", engines=test_engines(delay_ms=delay_ms))
    await eventually(lambda: b.sched.store.nodes().get("node-on-a") is not None, 5, "B to see the node")
    return a, b


async def test_node_on_a_session_on_b_results_in_order(cluster: Cluster, redis_url: str) -> None:
    """A node connected to instance A, session to instance B."""
    _a, b = await node_on_a(cluster, redis_url, delay_ms=5)
    async with SessionClient(b.url, src="en", tgt="es") as c:
        for i, secs in enumerate((0.6, 0.3, 0.1)):
            await c.send_utterance(i, pcm(secs))
        results = await c.results(3, timeout=15 * SCALE)
    assert [r.utterance_index for r in results] == [0, 1, 2]
    assert all(r.status == "ok" and r.node_id == "node-on-a" for r in results)
    assert [r.text_asr for r in results] == [
        "Test utterance 0.60.",
        "Test utterance 0.30.",
        "Test utterance 0.10.",
    ]


async def test_handed_over_job_reports_each_status_once_in_order(cluster: Cluster, redis_url: str) -> None:
    """The session's instance hands the job over at the reservation and reports nothing
    more itself; the node's instance reports assigned, then processing, then the result:
    the client sees the same events as from one scheduler, each once."""
    _a, b = await node_on_a(cluster, redis_url, delay_ms=20)
    async with SessionClient(b.url, src="en", tgt="es") as c:
        for i in range(3):
            await c.send_utterance(i, pcm(0.2))
        seen: dict[int, list[str]] = {0: [], 1: [], 2: []}
        for ev in await receive_until(c, until_result(3), 15):
            if isinstance(ev, p.JobStatus):
                seen[ev.utterance_index].append(ev.status)
                assert ev.node_id == "node-on-a"
            elif isinstance(ev, p.TranslationResult):
                assert ev.status == "ok"
                seen[ev.utterance_index].append("result")
    assert seen == {i: ["assigned", "processing", "result"] for i in range(3)}
    assert c.duplicates_dropped == 0
    assert (
        not b.sched.runner.runs and not b.sched.dispatcher.waiting
    )  # B kept nothing of the handed-over jobs


async def test_many_nodes_and_sessions_every_utterance_exactly_once(cluster: Cluster, redis_url: str) -> None:
    a, b = await two(cluster, redis_url)
    rng = random.Random(7)
    for i in range(4):
        target = a if i % 2 == 0 else b
        await cluster.node(
            target.url, f"n{i}", engines=test_engines(delay_ms=rng.randint(1, 20)), max_concurrent_jobs=2
        )
    await eventually(
        lambda: all(len(list(s.sched.store.nodes().all_nodes())) == 4 for s in (a, b)), 5, "mirrors"
    )

    async def session(k: int) -> list[p.TranslationResult]:
        target = a if k % 2 else b
        n = rng.randint(3, 8)
        async with SessionClient(
            target.url, src="en", tgt="es", extra_tgt_langs=["fr"] if k % 3 == 0 else []
        ) as c:
            for i in range(n):
                await c.send_utterance(i, pcm(0.05 + rng.random() * 0.2))
                await asyncio.sleep(rng.random() * 0.02)
            want = n * (2 if k % 3 == 0 else 1)
            results = await c.results(want, timeout=30 * SCALE)
            extra = await late_events(c)
            assert not [e for e in extra if isinstance(e, p.TranslationResult)]
            assert c.duplicates_dropped == 0
            return results

    all_results = await asyncio.gather(*(session(k) for k in range(6)))
    for results in all_results:
        by_lang: dict[str, list[int]] = {}
        for r in results:
            assert r.status == "ok", r.error
            by_lang.setdefault(r.tgt_lang, []).append(r.utterance_index)
        for indices in by_lang.values():
            assert indices == sorted(indices) and len(set(indices)) == len(indices)
    used = {r.node_id for rs in all_results for r in rs}
    assert len(used) >= 3  # work spread over nodes of both instances


async def test_resume_on_the_other_instance_gets_missed_results(cluster: Cluster, redis_url: str) -> None:
    a, b = await two(cluster, redis_url)
    await cluster.node(a.url, "n1", engines=test_engines(delay_ms=100))
    await eventually(lambda: b.sched.store.nodes().get("n1") is not None, 5, "B to see the node")
    c = SessionClient(a.url, src="en", tgt="es")
    await c.connect()
    for i in range(3):
        await c.send_utterance(i, pcm(0.1))
    # A accepted all three (a job_status each), then the client drops
    await receive_until(c, lambda evs: {e.utterance_index for e in of(evs, p.JobStatus)} == {0, 1, 2})
    await c.disconnect()
    c.url = b.url + "/ws/session"  # the load balancer sends the reconnect to B
    await c.resume()
    results = [r for r in await c.results(3, timeout=15 * SCALE)]
    await c.send_utterance(3, pcm(0.1))  # and B serves new work of the session
    results.append(await c.next_result(15 * SCALE))
    await c.disconnect()
    assert [r.utterance_index for r in results] == [0, 1, 2, 3]
    assert c.duplicates_dropped == 0
    assert c.session_id not in a.sched.sessions  # A was told the session moved


async def test_closing_a_session_waits_for_jobs_handed_to_another_instance(
    cluster: Cluster, redis_url: str
) -> None:
    """session_close on B while A runs the jobs: every result comes before session_closed."""
    _a, b = await node_on_a(cluster, redis_url, delay_ms=150)
    async with SessionClient(b.url, src="en", tgt="es") as c:
        for i in range(3):
            await c.send_utterance(i, pcm(0.2))
        await asyncio.sleep(0.05 * SCALE)  # accepted and handed over, not finished
        await c.close_session()
        events = await receive_until(c, lambda evs: bool(of(evs, p.SessionClosed)), 15, "session_closed")
    results = [e for e in events if isinstance(e, p.TranslationResult)]
    assert [r.utterance_index for r in results] == [0, 1, 2]
    assert all(r.status == "ok" for r in results)


async def test_events_reach_a_session_on_an_instance_that_joined_a_moment_ago(
    cluster: Cluster, redis_url: str
) -> None:
    """A has not yet seen B in its live set (B joined since A's last heartbeat) when it runs
    a job handed over from B's session: A re-reads who is live instead of stranding the
    session's events in the history (a race seen about once in twelve runs)."""
    a, b = await node_on_a(cluster, redis_url, delay_ms=5)
    assert a.sched.bridge is not None
    a.sched.bridge.cluster.live = {"A"}  # A's view just before B's first heartbeat reached it
    a.sched.bridge.cluster._live_read_at = float("-inf")
    async with SessionClient(b.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        r = await c.next_result(10 * SCALE)
    assert r.status == "ok" and r.node_id == "node-on-a"
    assert "B" in a.sched.bridge.cluster.live


async def test_a_session_on_b_gets_live_captions_from_a_streaming_node_on_a(
    cluster: Cluster, redis_url: str
) -> None:
    """The live utterance's job goes to the streaming node A holds: A gets the audio so
    far with the job, B relays the rest as it arrives, the node's partials come back
    before the end, and the result holds every chunk once."""
    from ..integration.test_live_streaming import CHUNK, collecting, results, stream

    a, b = await node_on_a(cluster, redis_url, delay_ms=0)
    await eventually(lambda: b.sched.store.nodes().get("node-on-a").streaming, 5, "B to see a streaming node")
    async with SessionClient(b.url, src="en", tgt="es") as c, collecting(c) as events:
        seq = await stream(c, 3.0)  # (an utterance's first words wait for 1 s after them)
        await eventually(
            lambda: any(isinstance(e, p.AsrPartial) and (e.stable or 0) >= 14 for e in events),
            5 * SCALE,
            "committed words before the end of the utterance",
        )
        await c.send_chunk(seq, pcm(CHUNK), is_final=True)
        seq = await stream(c, 1.0, seq + 1)  # a second utterance, relayed too
        await c.send_chunk(seq, b"", is_final=True)
        await eventually(lambda: len(results(events)) == 2, 10 * SCALE, "both results")
        await asyncio.sleep(0.3)  # nothing doubled follows
    first, second = results(events)
    assert (first.utterance_index, first.status, first.text_asr) == (0, "ok", "Test utterance 3.02.")
    assert (second.utterance_index, second.status, second.text_asr) == (1, "ok", "Test utterance 1.00.")
    assert first.node_id == "node-on-a"
    assert len(results(events)) == 2
    # A ran them as streaming jobs handed over by B
    ran = list(a.sched.runner.finished.values())
    assert len(ran) == 2 and all(j.attempt_id == 1 for j in ran)
    assert not b.sched.runner.finished  # B held the sessions, A ran the jobs


async def test_the_operator_api_answers_for_the_whole_cluster_on_any_instance(
    cluster: Cluster, redis_url: str
) -> None:
    """The node is held by A, the session by B, the job runs on A: B's node list, job
    lookup (with the history only A has) and admin overview show all of it."""
    import httpx

    _, b = await node_on_a(cluster, redis_url, delay_ms=0)
    async with SessionClient(b.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.1))
        r = await c.next_result(10 * SCALE)
    async with httpx.AsyncClient(timeout=10) as http:
        nodes = (await http.get(f"{b.http}/api/v1/nodes")).json()["nodes"]
        job = (await http.get(f"{b.http}/api/v1/jobs/{r.job_id}")).json()
        overview = (await http.get(f"{b.http}/api/v1/admin/overview")).json()
        missing = await http.get(f"{b.http}/api/v1/jobs/job-NOSUCHJOB")
    assert [(n["node_id"], n["instance_id"]) for n in nodes] == [("node-on-a", "A")]
    assert job["instance_id"] == "A" and job["state"] == "completed" and job["node_id"] == "node-on-a"
    assert [h["state"] for h in job["history"]][-1] == "completed"
    assert set(overview["instances"]) == {"A", "B"} and overview["unanswered"] == []
    assert [n["node_id"] for n in overview["nodes"]] == ["node-on-a"]
    assert any(j["job_id"] == r.job_id and j["instance_id"] == "A" for j in overview["recent_jobs"])
    assert missing.status_code == 404


async def test_a_viewer_on_another_instance_gets_the_replay_then_live_events(
    cluster: Cluster, redis_url: str
) -> None:
    """The session is held by A; its viewer's stream is on B (Redis pub/sub notices): the
    events so far, then each new one as it comes; a transcript download on B works too.
    When the session ends, B still serves its transcript."""
    import httpx

    from ..integration.test_web_api import _sse_events

    a, b = await node_on_a(cluster, redis_url, delay_ms=0)
    async with SessionClient(a.url, src="en", tgt="es") as c:
        assert c.ack is not None
        await c.send_utterance(0, pcm(0.1))
        await c.next_result(10 * SCALE)
        sid, token = c.ack.session_id, c.ack.view_token
        last = await a.sched.store.last_seq(sid)
        stream = f"{b.http}/api/v1/sessions/{sid}/events/stream?token={token}"
        replay = await _sse_events(stream, 0, stop_after=last)
        assert [s for s, _, _ in replay] == list(range(1, last + 1))
        got: asyncio.Queue[int] = asyncio.Queue()
        viewer = asyncio.create_task(
            _sse_events(stream, 0, {"Last-Event-ID": str(last)}, got, stop_after=10**9)
        )
        await eventually(lambda: b.sched.watch is not None and b.sched.watch.watching() == 1, 5, "B to watch")
        await c.send_utterance(1, pcm(0.1))
        await c.next_result(10 * SCALE)
        end = await a.sched.store.last_seq(sid)
        live = [await asyncio.wait_for(got.get(), 5 * SCALE) for _ in range(end - last)]
        assert live == list(range(last + 1, end + 1))  # each new event, in order, once
        viewer.cancel()
        await c.close_session()
        await asyncio.sleep(0.5)
    async with httpx.AsyncClient(timeout=10) as http:
        txt = await http.get(
            f"{b.http}/api/v1/sessions/{sid}/transcript", params={"format": "txt", "token": token}
        )
        bad = await http.get(
            f"{b.http}/api/v1/sessions/{sid}/transcript", params={"format": "txt", "token": "x"}
        )
    assert txt.status_code == 200 and len(transcript_lines(txt.text)) == 2
    assert bad.status_code == 401
    await eventually(
        lambda: b.sched.watch is not None and b.sched.watch.watching() == 0, 5, "B to stop watching"
    )


async def test_a_listener_on_another_instance_adds_its_language_to_the_session(
    cluster: Cluster, redis_url: str
) -> None:
    """The session is held by A; a viewer on B asks for fr: the language goes through the
    shared store to A (read at most once a second; a new utterance waits up to 50 ms for
    a read that is due, so utterance 0 has it unless the store was slow), whose
    utterances are then translated into it; B's viewer gets fr's results and A's speaker
    does not."""
    from ..integration.test_listeners import FOUR, results, standing, until, viewer

    a, b = await two(cluster, redis_url)
    await cluster.node(a.url, "node-on-a", engines=test_engines(languages=FOUR))
    await eventually(lambda: b.sched.store.nodes().get("node-on-a") is not None, 5, "B to see the node")
    async with SessionClient(a.url, src="en", tgt="es") as c:
        assert c.ack is not None
        stream = f"{b.http}/api/v1/sessions/{c.ack.session_id}/events/stream?token={c.ack.view_token}&lang=fr"
        async with viewer(stream) as fr:
            await until(lambda: standing(fr) == ["ok"], "fr accepted on B")
            await eventually(
                lambda: b.sched.watch is not None and b.sched.watch.watching() == 1, 5, "B to watch"
            )
            await c.send_utterance(0, pcm(0.1))
            first = await c.results(1, 10 * SCALE)
            await asyncio.sleep(1.1)
            for i in (1, 2, 3):
                await c.send_utterance(i, pcm(0.1))
            mine = first + await c.results(3, 10 * SCALE)
            await until(lambda: len(results(fr)) >= 3, "fr's results on B")
            await asyncio.sleep(0.3)
    assert [(r.utterance_index, r.tgt_lang) for r in mine] == [(0, "es"), (1, "es"), (2, "es"), (3, "es")]
    got = [(r["utterance_index"], r["tgt_lang"]) for r in results(fr)]
    assert got in ([(i, "fr") for i in range(4)], [(i, "fr") for i in (1, 2, 3)]), got  # each once, in order
