"""The scheduler's tail decision: a trace is exported when its job span ends, whole, if the
job failed or the ratio keeps it; spans ending later follow the decision."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, TraceIdRatioBased
from opentelemetry.trace import Status, StatusCode

from linguamesh.observability.tracing import TailSampler, remote_parent, traceparent_trace_id


def _setup(ratio: float) -> tuple[trace.Tracer, InMemorySpanExporter, TailSampler]:
    exporter = InMemorySpanExporter()
    tail = TailSampler(SimpleSpanProcessor(exporter), TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(tail)
    return provider.get_tracer("t"), exporter, tail


def _job(tracer: trace.Tracer, failed: bool) -> trace.Span:
    root = tracer.start_span("job")
    child = tracer.start_span("attempt", context=trace.set_span_in_context(root))
    child.end()
    if failed:
        root.set_status(Status(StatusCode.ERROR, "timeout"))
    return root


def test_a_ratio_of_zero_exports_failed_jobs_only_and_whole() -> None:
    tracer, exporter, _ = _setup(0.0)
    ok, failed = _job(tracer, False), _job(tracer, True)
    assert exporter.get_finished_spans() == ()  # held until the job span ends
    ok.end()
    failed.end()
    late = tracer.start_span("deliver", context=trace.set_span_in_context(failed))
    late.end()  # after the decision: follows it
    tracer.start_span("deliver", context=trace.set_span_in_context(ok)).end()
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["attempt", "deliver", "job"]
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {failed.get_span_context().trace_id}


def test_a_ratio_of_one_exports_everything() -> None:
    tracer, exporter, tail = _setup(1.0)
    root = _job(tracer, False)
    assert tail.keeps(root.get_span_context().trace_id)
    root.end()
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["attempt", "job"]


def test_held_traces_are_bounded() -> None:
    from linguamesh.observability import tracing

    tracer, _, tail = _setup(0.0)
    for _ in range(tracing._MAX_TRACES + 5):  # jobs that never end here (handed away)
        _job(tracer, False)
    assert len(tail.pending) == tracing._MAX_TRACES


def test_traceparent_parsing() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert traceparent_trace_id(tp) == "0af7651916cd43dd8448eb211c80319c"
    assert traceparent_trace_id("garbage") is None and traceparent_trace_id(None) is None
    ctx = remote_parent(tp)
    assert ctx is not None
    assert trace.get_current_span(ctx).get_span_context().span_id == 0xB7AD6B7169203331
    assert remote_parent("00-00000000000000000000000000000000-b7ad6b7169203331-01") is None
    assert remote_parent(None) is None
