"""A job's OpenTelemetry spans on the scheduler (``observability/tracing.py`` says when
tracing is on and which traces are exported).

::

    job                      created -> result created (error status when it failed)
    ├── queue_wait           an attempt's wait for a node, to its slot reserved
    ├── select               selection and reservation (the last, successful pass)
    ├── dispatch             the job_assign write
    ├── attempt              assign written -> result, failover or end (node_id, outcome)
    │   └── node.job         on the node, from the job_assign's traceparent
    │       └── stage.asr …
    └── deliver              result created -> written to the client socket

A job handed to the instance holding its node ends its ``job`` span here
(``handed_over_to``); that instance's ``job`` span continues it (``adopted``).
"""

from __future__ import annotations

from opentelemetry.trace import Span, SpanKind

from ...core.jobs import Job
from ...observability.tracing import Tracing, fail, remote_parent, trace_id_hex


class JobSpans:
    def __init__(
        self, tracing: Tracing, job: Job, *, adopted: bool = False, traceparent: str | None = None
    ) -> None:
        """``traceparent``: the job was handed over by another instance, whose ``job`` span
        this one continues (one trace across the instances)."""
        self.tracing = tracing
        self.root = tracing.span(
            "job",
            start=job.created_at,
            kind=SpanKind.SERVER,
            context=remote_parent(traceparent),
            attributes={
                "linguamesh.job_id": job.job_id,
                "linguamesh.trace_id": job.trace_id,
                "linguamesh.session_id": job.session_id,
                "linguamesh.utterance_index": job.utterance_index,
                "linguamesh.pair": job.pair,
                "linguamesh.adopted": adopted or None,
            },
        )
        self.attempt: Span | None = None
        self.sending: Span | None = None
        #: the trace id as logged (``otel_trace_id``), to find the trace from a log record
        self.trace_id = trace_id_hex(self.root)

    def traceparent(self) -> str:
        """The job span's context, for the instance the job is handed to."""
        return self.tracing.traceparent(self.root)

    def reserved(self, wait_since: float, select_started: float, node_id: str, attempt_id: int) -> None:
        attrs = {"linguamesh.node_id": node_id, "linguamesh.attempt_id": attempt_id}
        self.tracing.span("queue_wait", self.root, start=wait_since, attributes=attrs).end()
        self.tracing.span("select", self.root, start=select_started, attributes=attrs).end()

    def dispatching(self, node_id: str, attempt_id: int) -> str:
        """The attempt begins with its assign; the ``traceparent`` for the node."""
        self.attempt_over("abandoned")
        attrs = {"linguamesh.node_id": node_id, "linguamesh.attempt_id": attempt_id}
        self.attempt = self.tracing.span("attempt", self.root, kind=SpanKind.CLIENT, attributes=attrs)
        self.sending = self.tracing.span("dispatch", self.root, attributes=attrs)
        return self.tracing.traceparent(self.attempt)

    def dispatched(self, ok: bool) -> None:
        if self.sending is not None:
            if not ok:
                fail(self.sending, "dispatch_failed", "the write to the node failed")
            self.sending.end()
            self.sending = None

    def attempt_over(self, outcome: str, error: str | None = None) -> None:
        if self.attempt is not None:
            self.attempt.set_attribute("linguamesh.outcome", outcome)
            if error is not None:
                fail(self.attempt, error)
            self.attempt.end()
            self.attempt = None

    def finished(self, ok: bool, code: str | None, node_id: str | None) -> Span:
        """The job ended; the ``deliver`` span (ended when the result is written)."""
        self.attempt_over("result" if ok else "failed", None if ok else code)
        if node_id:
            self.root.set_attribute("linguamesh.node_id", node_id)
        self.root.set_attribute("linguamesh.status", "ok" if ok else "failed")
        if not ok:
            fail(self.root, code)
        deliver = self.tracing.span("deliver", self.root)
        self.root.end()
        return deliver

    def handed_over(self, instance: str) -> None:
        """Another instance runs the job from here on (its spans are that instance's)."""
        self.attempt_over("handed_over")
        self.root.set_attribute("linguamesh.handed_over_to", instance)
        self.root.end()
