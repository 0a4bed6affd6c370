"""Log context under concurrency, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import platform
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from linguamesh import __version__
from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.observability import logging as lmlog

from ..conftest import SCALE, Cluster, eventually, free_port, pcm, test_engines
from ..procs import node_proc, scheduler_proc, wait_node


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "all.log"
    lmlog.configure("debug", json_file=path, console=False, cache=False)
    yield path
    lmlog.reset()


async def test_fifty_concurrent_jobs_never_mix_log_context(cluster: Cluster, json_log: Path) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, "n1", engines=test_engines(delay_ms=15), max_concurrent_jobs=8)
    await cluster.node(s.url, "n2", engines=test_engines(delay_ms=10), max_concurrent_jobs=8)

    async def one_session(k: int) -> list[str]:
        async with SessionClient(s.url, src="en", tgt="es") as c:
            for i in range(5):
                await c.send_utterance(i, pcm(0.05 + 0.01 * k))
            results = await c.results(5, timeout=30 * SCALE)
            return [r.job_id for r in results]

    job_lists = await asyncio.gather(*(one_session(k) for k in range(10)))
    assert sum(len(x) for x in job_lists) == 50
    for h in lmlog.logging.getLogger().handlers:
        h.flush()
    recs = [json.loads(line) for line in json_log.read_text().splitlines() if line.startswith("{")]
    created = {r["job_id"]: r for r in recs if r["event"] == "job.created"}
    assert len(created) == 50
    # every record about a job carries that job's fields (none missing, none of another job),
    # and every job has the records of each step, on the scheduler and on the node
    steps = {"job.created", "job.dispatched", "job.acked", "job_result.received", "result.created",
             "result.sent", "job.received", "stage.done", "job_result.sent"}  # fmt: skip
    seen: dict[str, set[str]] = {job_id: set() for job_id in created}
    for r in recs:
        job_id = r.get("job_id")
        if job_id is None:
            continue
        assert job_id in created, r
        truth = created[job_id]
        for key in ("trace_id", "session_id", "utterance_index"):
            assert r.get(key) == truth[key], (r["event"], key, r.get(key), truth[key])
        seen[job_id].add(r["event"])
    missing = {job_id: sorted(steps - events) for job_id, events in seen.items() if not steps <= events}
    assert not missing, missing
    # records without a job id must not carry one from another task either
    session_trace = {r["session_id"]: r["trace_id"] for r in recs if r["event"] == "session.created"}
    for r in recs:
        if r.get("session_id") in session_trace and r.get("trace_id"):
            assert r["trace_id"] == session_trace[r["session_id"]], r
    for r in recs:
        if r["event"] in ("session.detached", "session.closed", "node.registered", "node.gone"):
            assert "job_id" not in r, r


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_scheduler_metrics_parse_and_move(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    async with httpx.AsyncClient() as http:
        alone = await http.get(f"{s.http}/readyz")  # no node yet: ready, but degraded
        strict = await http.get(f"{s.http}/readyz?strict=1")
    assert alone.status_code == 200 and alone.json()["status"] == "degraded"
    assert "no node connected" in alone.json()["degraded"][0]
    assert strict.status_code == 503
    await cluster.node(s.url)
    async with httpx.AsyncClient() as http:
        before = _metrics((await http.get(f"{s.http}/metrics")).text)
        async with SessionClient(s.url, src="en", tgt="es") as c:
            for i in range(3):
                await c.send_utterance(i, pcm(0.1))
            await c.results(3, timeout=10 * SCALE)
            await c.send_raw("not json")
            await c.recv(5 * SCALE)
        after = _metrics((await http.get(f"{s.http}/metrics")).text)
        ready = await http.get(f"{s.http}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["status"] == "ready"
    # counters exist from the start, at 0: a rate or an alert has data before the first event
    for name, labels in (
        ("linguamesh_protocol_errors_total", (("code", "dependency_down"),)),
        ("linguamesh_results_duplicate_total", ()),
        ("linguamesh_timeouts_total", (("kind", "result"),)),
        ("linguamesh_selection_failures_total", (("reason", "no_available_pool"),)),
        ("linguamesh_selection_fallbacks_total", (("reason", "node_unavailable"),)),
        ("linguamesh_selections_total", (("outcome", "failed"), ("selector", "pooled"))),
        ("linguamesh_jobs_finished_total", (("code", "timeout"), ("state", "failed"))),
    ):
        assert before[(name, labels)] == 0, name
    assert not any(name.startswith("linguamesh_node_jobs") for name, _ in before)  # a node's, not ours

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("linguamesh_jobs_created_total") == 3
    assert delta("linguamesh_jobs_finished_total", state="completed", code="none") == 3
    assert delta("linguamesh_reservations_attempted_total") == 3
    assert delta("linguamesh_reservations_succeeded_total") == 3
    assert delta("linguamesh_selections_total", outcome="ok", selector="pooled") == 3
    assert delta("linguamesh_results_delivered_total") == 3
    assert delta("linguamesh_protocol_errors_total", code="bad_message") == 1
    assert delta("linguamesh_dispatch_latency_seconds_count") == 3
    assert delta("linguamesh_end_to_end_latency_seconds_count", status="ok", pair="en-es") == 3
    assert delta("linguamesh_stage_latency_seconds_count", stage="asr") == 3
    assert delta("linguamesh_queue_wait_seconds_count", pair="en-es") == 3
    assert delta("linguamesh_ack_latency_seconds_count") == 3
    assert delta("linguamesh_delivery_latency_seconds_count") == 3
    assert after[("linguamesh_build_info", (("python", platform.python_version()), ("role", "scheduler"),
                                            ("version", __version__)))] == 1  # fmt: skip
    assert after[("process_resident_memory_bytes", ())] > 0
    assert not any(name.startswith("linguamesh_node_stage") for name, _ in after)
    assert after[("linguamesh_connected_nodes", ())] == 1
    assert after[("linguamesh_queue_depth", ())] == 0


async def test_node_exposes_health_and_metrics(tmp_path: Path) -> None:
    port = free_port()
    # bound to every address (--metrics-host 0.0.0.0: a probe from another pod reaches it)
    flags = ("--metrics-host", "0.0.0.0")
    async with node_proc(
        tmp_path, f"ws://127.0.0.1:{free_port()}", "node-alone", metrics_port=port, flags=flags
    ):
        async with httpx.AsyncClient() as http:  # no scheduler to connect to: alive, not ready
            for _ in range(int(100 * SCALE)):
                try:
                    ready = await http.get(f"http://127.0.0.1:{port}/readyz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            alive = await http.get(f"http://127.0.0.1:{port}/healthz")
        listening = {  # (local address, port) of the listening TCP sockets, from the kernel's table
            (line.split()[1].split(":")[0], int(line.split()[1].split(":")[1], 16))
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if line.split()[3] == "0A"
        }
        assert ("00000000", port) in listening, "not bound to 0.0.0.0"
    assert alive.status_code == 200 and alive.json()["connected"] is False
    assert alive.json()["status"] == "disconnected"
    assert ready.status_code == 503 and "not connected" in ready.json()["problems"][0]
    port = free_port()
    async with scheduler_proc(tmp_path) as (url, _sched):
        async with node_proc(tmp_path, url, metrics_port=port):
            await wait_node(url.replace("ws", "http"), "node-p")
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"http://127.0.0.1:{port}/readyz")).json()["ready"] is True
                listed = (await http.get(f"{url.replace('ws', 'http')}/api/v1/nodes")).json()["nodes"]
            (hw,) = [n["hardware"] for n in listed if n["node_id"] == "node-p"]
            assert hw["cpus"] >= 1 and hw["memory_mb"] > 0 and hw["cpu_model"] and hw["gpus"] == 0
            async with SessionClient(url, src="en", tgt="es") as c:
                await c.send_utterance(0, pcm(0.1))
                await c.next_result(10 * SCALE)
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
                m = _metrics((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
    assert health["connected"] is True and health["node_id"] == "node-p"
    assert m[("linguamesh_node_jobs_finished_total", (("outcome", "failed"),))] == 0  # there from the start
    assert not any(
        name.startswith(("linguamesh_dispatch", "linguamesh_end_to_end", "linguamesh_protocol"))
        for name, _ in m
    )
    assert m[("linguamesh_node_jobs_finished_total", (("outcome", "ok"),))] == 1
    assert m[("linguamesh_node_connected", ())] == 1
    assert m[("linguamesh_node_stage_seconds_count", (("stage", "tts"),))] == 1
    assert m[("linguamesh_node_real_time_factor_count", ())] == 1
    assert m[("process_cpu_seconds_total", ())] > 0
    assert any(name == "linguamesh_build_info" and ("role", "node") in labels for name, labels in m)
    assert not any(name.startswith("linguamesh_stage_latency") for name, _ in m)  # the scheduler's


async def test_log_hygiene_node_loss_crash_and_stop_and_a_waiting_fallback(
    cluster: Cluster, json_log: Path
) -> None:
    """``job.node_lost`` names the node; a crash is a warning and a stop is news (info); a
    job waiting for a slot with an absent preferred node says so at info once, then at debug."""
    from ..scripted_node import ScriptedNode

    s = await cluster.scheduler(heartbeat_interval=0.2, pending_timeout=5)
    crashy = ScriptedNode(s.url, "crashy", slots=1)
    await crashy.connect()
    async with SessionClient(s.url, src="en", tgt="es", preferred_node_id="absent") as c:
        await c.send_utterance(0, pcm(0.1))
        first = await crashy.expect(p.JobAssign)
        await c.send_utterance(1, pcm(0.1))  # waits: crashy's only slot is taken
        await asyncio.sleep(1.2 * SCALE)  # several heartbeats: the waiting job is retried
        assert crashy.ws is not None
        crashy.ws.transport.abort()  # a crash: no close frame
        await crashy.close()
        tidy = ScriptedNode(s.url, "tidy", slots=2)
        await tidy.connect()
        for _ in range(2):
            job = await tidy.expect(p.JobAssign)
            await tidy.send(p.JobAck(job_id=job.job_id, attempt_id=job.attempt_id))
            await tidy.send(tidy.result_for(job))
        results = await c.results(2, timeout=10 * SCALE)
        await tidy.close()  # a stop: close frame 1000
        await eventually(lambda: "tidy" not in s.sched.nodes, 5, "tidy to be gone")
    assert [r.status for r in results] == ["ok", "ok"]
    recs = [json.loads(line) for line in json_log.read_text().splitlines()]
    gone = {r["node_id"]: r for r in recs if r["event"] == "node.gone"}
    assert gone["crashy"]["level"] == "warning" and "connection lost" in gone["crashy"]["why"]
    assert gone["tidy"]["level"] == "info" and gone["tidy"]["why"] == "closed by the node"
    lost = [r for r in recs if r["event"] == "job.node_lost"]
    assert lost and all(r["node_id"] == "crashy" for r in lost)
    assert first.job_id in {r["job_id"] for r in lost}
    waiting = results[1].job_id
    fallbacks = [r for r in recs if r["event"] == "selection.preferred_fallback" and r["job_id"] == waiting]
    assert [r["level"] for r in fallbacks].count("info") == 1  # once at info, retries at debug
    failed = [r for r in recs if r["event"] == "selection.failed" and r["job_id"] == waiting]
    assert len(failed) == 1 and failed[0]["pools"], failed  # said once, with the pools that exist
