"""The job observer: what the runner and the dispatcher decided, turned into log records,
metrics and spans — in one place, so deciding code does not observe and a log event's
name never decides a metric (notes are told apart by their :class:`NoteKind`)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ... import protocol as p
from ...core.jobs import Job
from ...core.lifecycle import Finish, Note, NoteKind
from ...observability import tracing
from ...observability.logging import get_logger
from ...observability.metrics import Metrics
from ..records import job_fields
from .dispatch import SelectionReport
from .jobrun import JobRun
from .results import failure_entry, stage_seconds

log = get_logger("linguamesh.scheduler")


class JobObserver:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.tracing = tracing.current("scheduler")
        #: the last failed jobs, newest last, for the operator page
        self.failures: deque[dict[str, Any]] = deque(maxlen=200)

    # ------------------------------------------------------------------ selection

    def selection(self, run: JobRun, r: SelectionReport, now: float) -> None:
        job = run.job
        out = r.outcome
        m = self.metrics
        if r.first or job.attempt_id > 1:
            log.info(
                "selection.started",
                **job_fields(job),
                request_id=job.request_id,
                src_lang=job.src_lang,
                tgt_lang=job.tgt_lang,
                preferred_node_id=job.preferred_node_id,
                excluded=sorted(job.excluded),
            )
        if r.ended == "queued":
            m.inc("selections", outcome="queued", selector=out.selector)
            m.inc("selection_failures", reason="fair_share")
            log.info("selection.queued", **job_fields(job), reason="fair_share", waiting=r.waiting)
            return
        if out.fallback is not None:
            if r.counted:
                m.inc("selection_fallbacks", reason=out.fallback.value)
            # once per attempt at info; a waiting job re-tried on every retry only at debug
            (log.info if r.counted else log.debug)(
                "selection.preferred_fallback",
                **job_fields(job),
                preferred_node_id=job.preferred_node_id,
                fallback_reason=out.fallback.value,
                selected_node=out.candidates[0] if out.candidates else None,
            )
        for node_id, reserved in r.tried:
            m.inc("reservations_attempted")
            if reserved is False:
                log.info("reservation.failed", **{**job_fields(job), "node_id": node_id})
        if r.ended == "ok" and r.node_id is not None:
            node_id = r.node_id
            m.inc("reservations_succeeded")
            m.inc("selections", outcome="ok", selector=out.selector)
            # the attempt waited since the job (or its failover) needed a node
            m.queue_wait.labels(job.pair).observe(max(0.0, now - job.waiting_since))
            if run.spans is not None:
                run.spans.reserved(job.waiting_since, r.started, node_id, job.attempt_id)
            log.info(
                "selection.succeeded",
                **{**job_fields(job), "node_id": node_id},
                selected_node=node_id,
                selector=out.selector,
                preferred_used=out.preferred_used,
            )
            log.debug(
                "selection.pool_details",
                **job_fields(job),
                pool_count=out.pool_count,
                eligible_pools=out.eligible_pools,
                selected_pool=out.selected_pool,
                attempts=out.attempts,
            )
            log.info("reservation.succeeded", **{**job_fields(job), "node_id": node_id})
            return
        if r.reason == "dependency_down":
            if r.counted:
                m.inc("selections", outcome="failed", selector=out.selector)
                m.inc("selection_failures", reason="dependency_down")
            log.warning("selection.failed", **job_fields(job), reason="dependency_down")
            return
        if r.counted:
            m.inc("selections", outcome="failed", selector=out.selector)
            m.inc("selection_failures", reason=str(r.reason))
            log.warning(
                "selection.failed",
                **job_fields(job),
                selector=out.selector,
                reason=r.reason,
                # why each node was passed over (none when no node serves the pair at all)
                breakdown={k.value: v for k, v in out.breakdown.counts.items()} or None,
                src_lang=job.src_lang,
                tgt_lang=job.tgt_lang,
                pools=r.pools,
                detail=r.detail,
            )

    # ------------------------------------------------------------------ the lifecycle's notes

    def note(self, run: JobRun, cmd: Note) -> None:
        job = run.job
        base = job_fields(job)
        note = dict(cmd.fields)
        if base.get("node_id") is None and note.get("node_id") is not None:
            base["node_id"] = note.pop("node_id")  # the attempt's node, cleared by the failover since
        # a note's own field named like a job field (a stale event's attempt_id) is the event's
        fields = {(f"event_{k}" if k in base else k): v for k, v in note.items()}
        kind = cmd.kind
        if kind is NoteKind.STALE_EVENT:
            log.debug(kind.value, **base, **fields)
            return
        if kind is NoteKind.RESULT_DUPLICATE:
            self.metrics.inc("results_duplicate")
            log.info(kind.value, **base, **fields)
            return
        if kind is NoteKind.FAILOVER:
            reason = str(fields.get("reason", "")).split(":")[0]
            self.metrics.inc("failovers", reason=reason)
            if run.spans is not None:
                run.spans.attempt_over("failover", reason)
        elif kind.timeout is not None:
            self.metrics.inc("timeouts", kind=kind.timeout)
        log.warning(kind.value, **base, **fields)

    # ------------------------------------------------------------------ the end of a job

    def acked(self, job: Job, seconds: float) -> None:
        self.metrics.ack_latency.observe(seconds)

    def finished(self, run: JobRun, cmd: Finish, result: p.TranslationResult, now: float) -> None:
        """The job ended (``result`` is what its client gets)."""
        job = run.job
        m = self.metrics
        m.inc("jobs_finished", state=job.state.value, code=cmd.error_code or "none")
        if not cmd.ok:
            self.failures.append(failure_entry(job, cmd, time.time()))
        total = now - job.created_at
        m.end_to_end.labels("ok" if cmd.ok else "failed", job.pair).observe(total)
        for stage, seconds in stage_seconds(job, cmd):
            m.stage_latency.labels(stage).observe(seconds)
        otel_trace_id = None
        if run.spans is not None and self.tracing is not None:
            self.tracing.deliver(job.job_id, run.spans.finished(cmd.ok, cmd.error_code, cmd.node_id))
            otel_trace_id = run.spans.trace_id
        log.info(
            "result.created",
            **{**job_fields(job), "node_id": cmd.node_id},
            otel_trace_id=otel_trace_id,
            status=result.status,
            error_code=cmd.error_code,
            text_asr=result.text_asr,
            text_translated=result.text_translated,
            tts_audio_len=len(result.tts_audio or b""),
            elapsed_ms=round(total * 1000, 3),
        )
        m.inc("results_emitted")
        m.result_created(job.job_id, now)
