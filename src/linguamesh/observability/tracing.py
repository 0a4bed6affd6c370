"""OpenTelemetry traces: a trace per job, across the scheduler and the node.

Off unless the standard environment asks for it: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, ``OTEL_SDK_DISABLED`` not true and
``OTEL_TRACES_EXPORTER`` not ``none``. Spans go out over OTLP/HTTP (protobuf) with the
official SDK's batch processor; every other ``OTEL_*`` setting (headers, timeout, batch
sizes, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) works as documented by
OpenTelemetry.

The scheduler (``job`` span, children ``queue_wait``, ``select``, ``dispatch``, one
``attempt`` per attempt and ``deliver``) records every job and decides at the job's end
which traces to export (:class:`TailSampler`): all failed jobs, and the others as
``OTEL_TRACES_SAMPLER`` says (e.g. ``traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG=0.1``).
The node continues the trace from the W3C ``traceparent`` in ``job_assign`` (a ``node.job``
span under the scheduler's ``attempt``, a ``stage.<name>`` span per stage) and follows its
sampled flag, which carries the ratio decision.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, _get_from_env_or_default
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import __version__
from .logging import get_logger

log = get_logger("linguamesh.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
#: traces remembered: undecided (waiting for their job span) and decided (late spans follow)
_MAX_TRACES = 10_000


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def wall_ns(at: float, clock: Callable[[], float] = time.monotonic) -> int:
    """A reading ``at`` of ``clock`` as the wall-clock nanoseconds spans are stamped with."""
    return time.time_ns() - int((clock() - at) * 1e9)


class TailSampler(SpanProcessor):
    """Holds a trace's spans until its root ``job`` span ends, then exports them all when
    the job failed or the ratio sampler keeps the trace; spans that end later follow the
    decision."""

    def __init__(self, inner: SpanProcessor, ratio: Sampler) -> None:
        self.inner = inner
        self.ratio = ratio
        self.pending: OrderedDict[int, list[ReadableSpan]] = OrderedDict()
        self.decided: OrderedDict[int, bool] = OrderedDict()

    def keeps(self, trace_id: int) -> bool:
        """The head (ratio) decision for a trace; the same at its start and its end."""
        out = self.ratio.should_sample(None, trace_id, "job")
        return out.decision is Decision.RECORD_AND_SAMPLE

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.get_span_context()
        if ctx is None:
            return
        tid = ctx.trace_id
        keep = self.decided.get(tid)
        if keep is not None:
            if keep:
                self.inner.on_end(span)
            return
        if span.parent is None or span.parent.is_remote:  # the job's span here: decide
            failed = span.status.status_code is StatusCode.ERROR
            keep = failed or self.keeps(tid)
            self.decided[tid] = keep
            if len(self.decided) > _MAX_TRACES:
                self.decided.popitem(last=False)
            for s in (*self.pending.pop(tid, []), span):
                if keep:
                    self.inner.on_end(s)
            return
        self.pending.setdefault(tid, []).append(span)
        if len(self.pending) > _MAX_TRACES:  # a job that never ended (its instance moved on)
            self.pending.popitem(last=False)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Tracing:
    """One process part's tracer (the scheduler's or the node's)."""

    def __init__(self, role: str, instance: str | None = None, exporter: SpanExporter | None = None) -> None:
        self.role = role
        attrs: dict[str, Any] = {"service.name": f"linguamesh-{role}", "service.version": __version__}
        if instance:
            attrs["service.instance.id"] = instance
        if os.environ.get("OTEL_SERVICE_NAME"):  # the operator's name wins over ours
            del attrs["service.name"]
        resource = Resource.create(attrs)  # with OTEL_RESOURCE_ATTRIBUTES
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        batch = BatchSpanProcessor(exporter)
        env_sampler = _get_from_env_or_default()
        self.tail: TailSampler | None = None
        if role == "scheduler":
            # record every job; the tail sampler exports failed ones and the ratio's share
            self.tail = TailSampler(batch, env_sampler)
            self.provider = TracerProvider(sampler=ALWAYS_ON, resource=resource, shutdown_on_exit=False)
            self.provider.add_span_processor(self.tail)
        else:
            # the node follows the scheduler's sampled flag (parent-based by default)
            self.provider = TracerProvider(sampler=env_sampler, resource=resource, shutdown_on_exit=False)
            self.provider.add_span_processor(batch)
        self.tracer = self.provider.get_tracer(f"linguamesh.{role}", __version__)
        #: results created and not yet written to their client: their ``deliver`` spans
        self.delivering: OrderedDict[str, Span] = OrderedDict()

    def deliver(self, job_id: str, span: Span) -> None:
        self.delivering[job_id] = span
        while len(self.delivering) > _MAX_TRACES:  # a session that went away: never written
            self.delivering.popitem(last=False)[1].end()

    def delivered(self, job_id: str) -> None:
        span = self.delivering.pop(job_id, None)
        if span is not None:
            span.end()

    def span(
        self,
        name: str,
        parent: Span | None = None,
        *,
        start: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        context: otel_context.Context | None = None,
    ) -> Span:
        """A span started now, or at ``start`` (a reading of ``clock``)."""
        ctx = trace.set_span_in_context(parent) if parent is not None else context
        return self.tracer.start_span(
            name,
            context=ctx if ctx is not None else otel_context.Context(),
            kind=kind,
            attributes={k: v for k, v in (attributes or {}).items() if v is not None},
            start_time=wall_ns(start, clock) if start is not None else None,
        )

    def traceparent(self, span: Span) -> str:
        """The W3C ``traceparent`` of ``span`` for a node: its sampled flag is the ratio
        decision (a failed job outside the ratio keeps the scheduler's spans only)."""
        ctx = span.get_span_context()
        sampled = self.tail.keeps(ctx.trace_id) if self.tail is not None else ctx.trace_flags.sampled
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{'01' if sampled else '00'}"

    def shutdown(self) -> None:
        self.provider.shutdown()


def remote_parent(traceparent: str | None) -> otel_context.Context | None:
    """The context a ``job_assign``'s ``traceparent`` names (None when absent or malformed)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def traceparent_trace_id(traceparent: str | None) -> str | None:
    """The trace id in a ``traceparent`` (logged by the node as ``otel_trace_id``)."""
    m = _TRACEPARENT.match(traceparent or "")
    return m.group(1) if m else None


def stage_span(stage: str, started: float, **attributes: Any) -> None:
    """A ``stage.<name>`` span from ``started`` (a ``time.perf_counter()`` reading) to now,
    under the node's current job span (nothing when tracing is off)."""
    t = _current.get("node")
    if t is None:
        return
    parent = trace.get_current_span()
    if not parent.get_span_context().is_valid:
        return
    attrs = {f"linguamesh.{k}": v for k, v in attributes.items()}
    t.span(f"stage.{stage}", parent, start=started, clock=time.perf_counter, attributes=attrs).end()


def trace_id_hex(span: Span | None) -> str | None:
    """The OTel trace id of ``span`` as logged (``otel_trace_id``), to join logs and traces."""
    if span is None:
        return None
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


def fail(span: Span, code: str | None, message: str = "") -> None:
    span.set_status(Status(StatusCode.ERROR, f"{code}: {message}" if message else str(code)))
    if code:
        span.set_attribute("linguamesh.error_code", code)


_current: dict[str, Tracing] = {}


def configure(role: str, instance: str | None = None) -> Tracing | None:
    """Set up the ``role``'s tracer when the environment asks for it (see the module doc)."""
    if not enabled():
        _current.pop(role, None)
        return None
    t = _current[role] = Tracing(role, instance)
    log.info(
        "tracing.enabled",
        role=role,
        endpoint=os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        sampler=os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
    )
    return t


def current(role: str) -> Tracing | None:
    return _current.get(role)


def shutdown() -> None:
    """Export what is buffered and stop (at process exit)."""
    for t in list(_current.values()):
        t.shutdown()
    _current.clear()
