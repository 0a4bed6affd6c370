"""Node-reported failures end to end, with real node agents whose test engines fail on
purpose (``fail``, ``fail_every``) and hand-written nodes that reject: failover, a
non-retryable failure, attempts exhausted, an at-capacity reject and an engine crash."""

from __future__ import annotations

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, late_events, pcm, test_engines
from ..scripted_node import ScriptedNode


async def _one(url: str, preferred: str | None = None, index: int = 0) -> p.TranslationResult:
    async with SessionClient(url, src="en", tgt="es", preferred_node_id=preferred) as c:
        await c.send_utterance(index, pcm(0.2))
        result = await c.next_result(15 * SCALE)
        assert not [e for e in await late_events(c) if isinstance(e, p.TranslationResult)]
        return result


async def test_a_node_error_fails_over_to_a_healthy_node(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    bad = await cluster.node(s.url, "bad", engines=test_engines(fail="node_failed"))
    await cluster.node(s.url, "good")
    r = await _one(s.url, preferred="bad")
    assert r.status == "ok" and r.node_id == "good"
    view = s.sched.job_view(r.job_id)
    assert view is not None and view["attempt_id"] == 2 and view["excluded_nodes"] == ["bad"]
    assert bad.agent.metrics.value("node_jobs_finished", outcome="failed") == 1
    assert s.sched.metrics.value("failovers", reason="node error") == 1


async def test_a_non_retryable_failure_ends_the_job_at_once(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "strict", engines=test_engines(fail="bad_audio"))
    good = await cluster.node(s.url, "good")
    r = await _one(s.url, preferred="strict")
    assert r.status == "failed" and r.error is not None and r.error.code == "bad_audio"
    assert r.node_id == "strict" and s.sched.job_view(r.job_id)["attempt_id"] == 1  # type: ignore[index]
    assert good.agent.metrics.value("node_jobs_received") == 0  # another node would fail the same way


async def test_attempts_exhausted_gives_the_last_reason(cluster: Cluster) -> None:
    s = await cluster.scheduler(max_attempts=3)
    for n in ("f1", "f2", "f3"):
        await cluster.node(s.url, n, engines=test_engines(fail="node_failed"))
    r = await _one(s.url)
    assert r.status == "failed" and r.error is not None and r.error.code == "node_failed"
    view = s.sched.job_view(r.job_id)
    assert view is not None and view["attempt_id"] == 3
    assert sorted([*view["excluded_nodes"], r.node_id]) == ["f1", "f2", "f3"]  # each node tried once
    assert sum(n.agent.metrics.value("node_jobs_received") for n in cluster.nodes) == 3


async def test_every_other_job_failing_still_yields_every_result(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "flaky", engines=test_engines(fail="node_failed", fail_every=2))
    await cluster.node(s.url, "steady")
    async with SessionClient(s.url, src="en", tgt="es") as c:
        for i in range(8):
            await c.send_utterance(i, pcm(0.1))
        results = await c.results(8, timeout=20 * SCALE)
    assert [r.utterance_index for r in results] == list(range(8))
    assert all(r.status == "ok" for r in results)
    assert s.sched.metrics.value("failovers") == cluster.nodes[0].agent.metrics.value(
        "node_jobs_finished", outcome="failed"
    )


async def test_an_engine_crash_is_reported_and_the_job_served_elsewhere(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    crashy = await cluster.node(s.url, "crashy", engines=test_engines(fail="crash"))
    await cluster.node(s.url, "good")
    r = await _one(s.url, preferred="crashy")
    assert r.status == "ok" and r.node_id == "good"
    assert crashy.agent.connected.is_set() and "crashy" in s.sched.nodes  # the node lives on
    assert s.sched.metrics.value("failovers", reason="node error") == 1


async def test_a_node_at_capacity_rejects_and_the_job_goes_elsewhere(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    full = ScriptedNode(s.url, "full", slots=4)
    await full.connect()
    other = ScriptedNode(s.url, "other", slots=4)
    await other.connect()
    async with SessionClient(s.url, src="en", tgt="es", preferred_node_id="full") as c:
        await c.send_utterance(0, pcm(0.2))
        job = await full.expect(p.JobAssign)
        await full.send(p.JobReject(job_id=job.job_id, attempt_id=job.attempt_id, reason="at capacity"))
        retry = await other.expect(p.JobAssign)
        assert retry.job_id == job.job_id and retry.attempt_id == 2
        await other.send(other.result_for(retry, "served"))
        r = await c.next_result(10 * SCALE)
        statuses = [e.status for e in await late_events(c, 0) if isinstance(e, p.JobStatus)]
    assert r.status == "ok" and r.node_id == "other" and statuses == []
    assert s.sched.job_view(job.job_id)["excluded_nodes"] == ["full"]  # type: ignore[index]
    await full.close()
    await other.close()
