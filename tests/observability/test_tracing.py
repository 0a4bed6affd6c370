"""OpenTelemetry traces from real scheduler and node processes to a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.observability.tracing import enabled

from ..conftest import SCALE, free_port, late_events, of, pcm
from ..otlp_receiver import OtlpReceiver, ReceivedSpan
from ..procs import Proc, launch, node_config, wait_node, wait_ready


def _env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", **extra}


async def _until(receiver: OtlpReceiver, pred: object, what: str) -> list[ReceivedSpan]:
    for _ in range(int(150 * SCALE)):
        spans = receiver.snapshot()
        if pred(spans):  # type: ignore[operator]
            return spans
        await asyncio.sleep(0.1)
    raise AssertionError(f"never received {what}: {[(s.service, s.name) for s in receiver.snapshot()]}")


def _records(path: Path, event: str) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


@asynccontextmanager
async def traced(
    tmp_path: Path, env: dict[str, str], *flags: str, delay_ms: int = 20
) -> AsyncIterator[tuple[str, Proc]]:
    """A scheduler and a node process (``node-t``) exporting traces: the scheduler's URL and
    the node."""
    port = free_port()
    sched = launch("scheduler", "--port", str(port), *flags, log=tmp_path / "s.log", env=env)
    node = launch("node", "--scheduler", f"ws://127.0.0.1:{port}", "--config",
                  str(node_config(tmp_path, "node-t", delay_ms)), log=tmp_path / "n.log", env=env)  # fmt: skip
    try:
        await wait_ready(port, sched)
        await wait_node(f"http://127.0.0.1:{port}", "node-t")
        yield f"ws://127.0.0.1:{port}", node
    finally:
        node.stop()
        sched.stop()


async def test_one_job_is_one_trace_with_scheduler_and_node_spans_correctly_parented(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        async with traced(tmp_path, _env(receiver)) as (url, _):
            async with SessionClient(url, src="en", tgt="es") as c:
                await c.send_utterance(0, pcm(0.3))
                r = await c.next_result(10 * SCALE)
            spans = await _until(
                receiver,
                lambda ss: {"deliver", "stage.tts", "job"} <= {s.name for s in ss},
                "the job's spans",
            )
    assert r.status == "ok"
    assert len({s.trace_id for s in spans}) == 1, "one job, one trace"
    by = {s.name: s for s in spans}
    root = by["job"]
    assert root.parent_id == "" and root.service == "linguamesh-scheduler"
    assert root.attributes["linguamesh.job_id"] == r.job_id and root.attributes["linguamesh.pair"] == "en-es"
    for child in ("queue_wait", "select", "dispatch", "attempt", "deliver"):
        assert by[child].parent_id == root.span_id, child
        assert by[child].service == "linguamesh-scheduler"
    assert by["attempt"].attributes["linguamesh.node_id"] == "node-t"
    # the node continues the trace from job_assign's traceparent, under the attempt
    assert by["node.job"].service == "linguamesh-node" and by["node.job"].parent_id == by["attempt"].span_id
    for stage in ("asr", "repair", "nmt", "tts"):
        s = by[f"stage.{stage}"]
        assert s.parent_id == by["node.job"].span_id and s.service == "linguamesh-node", stage
        assert by["node.job"].start_ns <= s.start_ns <= s.end_ns <= by["node.job"].end_ns
    assert root.start_ns <= by["attempt"].start_ns and by["attempt"].end_ns <= root.end_ns
    # the logs name the same trace on both sides, to join the two
    created = _records(tmp_path / "s.log", "result.created")
    received = _records(tmp_path / "n.log", "job.received")
    assert created[0]["otel_trace_id"] == root.trace_id == received[0]["otel_trace_id"]


async def test_a_ratio_of_zero_still_keeps_every_failed_job(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        env = _env(receiver, OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0")
        async with traced(tmp_path, env, "--pending-timeout", "0.5") as (url, _):
            async with SessionClient(url, src="en", tgt="es") as c:
                for i in range(3):
                    await c.send_utterance(i, pcm(0.2))
                ok = await c.results(3, timeout=10 * SCALE)
            async with SessionClient(url, src="en", tgt="de") as c:
                await c.send_utterance(0, pcm(0.2))
                failed = await c.next_result(10 * SCALE)
            spans = await _until(receiver, lambda ss: any(s.name == "job" for s in ss), "the failed job")
            await asyncio.sleep(1.0)  # anything else would have come by now
            spans = receiver.snapshot()
    assert [x.status for x in ok] == ["ok"] * 3 and failed.status == "failed"
    roots = [s for s in spans if s.name == "job"]
    assert len(roots) == 1 and roots[0].attributes["linguamesh.job_id"] == failed.job_id
    assert roots[0].status_code == 2 and roots[0].attributes["linguamesh.error_code"] == "no_available_node"
    assert {s.trace_id for s in spans} == {roots[0].trace_id}
    assert not any(s.service == "linguamesh-node" for s in spans)  # successful jobs: not sampled


async def test_each_attempt_of_a_job_whose_node_was_killed_is_a_span(tmp_path: Path) -> None:
    """SIGKILL of the node running a job: the trace shows both attempts under the job, the
    first ended by the failover, the second served by the other node; one result, 0 lost,
    0 duplicated."""
    import signal

    with OtlpReceiver() as receiver:
        env = _env(receiver)
        async with traced(tmp_path, env, "--ack-timeout", "2", delay_ms=600) as (url, node):
            async with SessionClient(url, src="en", tgt="es") as c:
                await c.send_utterance(0, pcm(0.3))
                for _ in range(int(100 * SCALE)):  # node-t has it
                    if _records(tmp_path / "n.log", "job.received"):
                        break
                    await asyncio.sleep(0.05)
                other = launch("node", "--scheduler", url, "--config", str(node_config(tmp_path, "node-u")),
                               log=tmp_path / "u.log", env=env)  # fmt: skip
                try:
                    await wait_node(url.replace("ws", "http"), "node-u")
                    node.proc.send_signal(signal.SIGKILL)
                    results = [await c.next_result(15 * SCALE)]
                    results += of(await late_events(c, 0, 1.5 * SCALE), p.TranslationResult)  # duplicates
                    spans = await _until(
                        receiver, lambda ss: {"job", "deliver"} <= {s.name for s in ss}, "the job's spans"
                    )
                finally:
                    other.stop()
    assert [r.status for r in results] == ["ok"] and results[0].node_id == "node-u"  # 0 lost, 0 duplicated
    root = next(s for s in spans if s.name == "job")
    attempts = sorted((s for s in spans if s.name == "attempt"), key=lambda s: s.start_ns)
    assert [(a.attributes["linguamesh.node_id"], a.attributes["linguamesh.outcome"]) for a in attempts] == [
        ("node-t", "failover"),
        ("node-u", "result"),
    ]
    assert attempts[0].status_code == 2 and attempts[0].attributes["linguamesh.error_code"] == "node_lost"
    assert all(a.parent_id == root.span_id for a in attempts) and root.status_code != 2
    served = [s for s in spans if s.name == "node.job"]
    assert [s.parent_id for s in served] == [attempts[1].span_id]  # the killed node exported nothing


async def test_a_job_handed_to_another_instance_stays_one_trace(tmp_path: Path) -> None:
    """The session on instance B, the node on A (Redis between them): B hands the job to A.
    A's ``job`` span continues B's, so the job is one trace across both instances and the
    node; one result, 0 lost, 0 duplicated."""
    from ..fleet import Fleet

    with OtlpReceiver() as receiver:
        env = _env(receiver)
        async with Fleet(tmp_path) as fleet:
            a = await fleet.scheduler("A", env=env)
            b = await fleet.scheduler("B", env=env)
            fleet.node("node-h", [a.url], delay_ms=20, env=env)
            await fleet.wait_node("B", "node-h")
            async with SessionClient(b.url, src="en", tgt="es") as c:
                await c.send_utterance(0, pcm(0.2))
                results = [await c.next_result(15 * SCALE)]
                results += of(await late_events(c, 0, 1.5 * SCALE), p.TranslationResult)  # duplicates
            spans = await _until(
                receiver,
                lambda ss: sum(s.name == "job" for s in ss) == 2 and any(s.name == "stage.tts" for s in ss),
                "both instances' job spans",
            )
    assert [r.status for r in results] == ["ok"]  # 0 lost, 0 duplicated
    assert len({s.trace_id for s in spans}) == 1, "one job, one trace"
    jobs = {s.attributes.get("linguamesh.handed_over_to") is not None: s for s in spans if s.name == "job"}
    first, taken = jobs[True], jobs[False]
    assert first.parent_id == "" and first.attributes["linguamesh.handed_over_to"] == "A"
    assert taken.parent_id == first.span_id and taken.attributes["linguamesh.adopted"] is True
    attempt = next(s for s in spans if s.name == "attempt" and s.parent_id == taken.span_id)
    node_job = next(s for s in spans if s.name == "node.job")
    assert node_job.parent_id == attempt.span_id and node_job.service == "linguamesh-node"
    assert (first.instance, taken.instance, node_job.instance) == ("B", "A", "node-h")


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert not enabled({})
    assert enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"})


async def test_a_job_taken_over_from_a_killed_instance_keeps_its_trace(tmp_path: Path) -> None:
    """A holds the session and dispatched the job; A is SIGKILLed while the node runs it.
    B takes the job over (its record carries the trace context): B's ``job`` span continues
    A's, in the same trace as the node's span of A's attempt; one result, 0 lost, 0
    duplicated."""
    import signal

    from ..fleet import Fleet, Speaker, finish

    with OtlpReceiver() as receiver:
        env = _env(receiver)
        async with Fleet(tmp_path) as fleet:
            flags = ("--ack-timeout", "2", "--result-timeout", "4")
            a = await fleet.scheduler("A", *flags, env=env)
            b = await fleet.scheduler("B", *flags, env=env)
            fleet.node("node-k", [a.url, b.url], delay_ms=600, env=env)
            await fleet.wait_node("B", "node-k")
            speaker = Speaker([a.url, b.url], "s-k")
            await speaker.start()
            await speaker.say()
            for _ in range(int(100 * SCALE)):  # the node has A's attempt
                if _records(tmp_path / "node-k.1.log", "job.received"):
                    break
                await asyncio.sleep(0.05)
            fleet.signal("A", signal.SIGKILL)
            await finish([speaker], 30 * SCALE)  # 0 lost, 0 duplicated
            spans = await _until(
                receiver,
                lambda ss: (
                    any(s.name == "job" and s.instance == "B" for s in ss)
                    and any(s.name == "node.job" for s in ss)
                ),
                "B's job span and the node's",
            )
    taken = next(s for s in spans if s.name == "job" and s.instance == "B")
    node_job = next(s for s in spans if s.name == "node.job")
    assert taken.attributes["linguamesh.adopted"] is True
    assert taken.parent_id != "" and taken.trace_id == node_job.trace_id, "one job, one trace"
