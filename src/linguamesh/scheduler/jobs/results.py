"""Pure result building: what the client gets when a job ends, and what the operator
page keeps of a failure."""

from __future__ import annotations

from typing import Any

from ... import protocol as p
from ...core.jobs import Job
from ...core.lifecycle import Finish


def translation_result(
    job: Job, cmd: Finish, total_ms: float, now: float, tts_wanted: bool
) -> p.TranslationResult:
    """The ``translation_result`` for a job that ended as ``cmd`` says (``now``: monotonic)."""
    if cmd.ok:
        res: p.JobResult = cmd.payload
        t = res.timings
        queue_ms = ((job.dispatched_at or now) - job.created_at) * 1000
        timings = p.Timings(
            queue_ms=round(queue_ms, 3),
            asr_ms=t.asr_ms,
            repair_ms=t.repair_ms,
            nmt_ms=t.nmt_ms,
            tts_ms=t.tts_ms,
            total_ms=round(total_ms, 3),
        )
        return p.TranslationResult(
            utterance_index=job.utterance_index,
            tgt_lang=job.tgt_lang,
            job_id=job.job_id,
            status="ok",
            text_asr=res.text_asr,
            text_translated=res.text_translated,
            tts_audio=res.tts_audio if tts_wanted else None,
            tts_format=res.tts_format if tts_wanted else None,
            tts_sample_rate=res.tts_sample_rate if tts_wanted else None,
            timings=timings,
            node_id=cmd.node_id,
            trace_id=job.trace_id,
            spoken_at=round(job.spoken_at, 3) if job.spoken_at else None,
            audio_seconds=round(job.audio_seconds, 3),
        )
    return p.TranslationResult(
        utterance_index=job.utterance_index,
        tgt_lang=job.tgt_lang,
        job_id=job.job_id,
        status="failed",
        timings=p.Timings(total_ms=round(total_ms, 3)),
        node_id=cmd.node_id,
        error=p.ErrorInfo(code=cmd.error_code or "internal", message=cmd.error_message or ""),
        trace_id=job.trace_id,
    )


def stage_seconds(job: Job, cmd: Finish) -> list[tuple[str, float]]:
    """Each stage's time as the node reported it (successful results only)."""
    if not cmd.ok:
        return []
    t = cmd.payload.timings
    out = []
    for stage in job.stages:
        ms = getattr(t, f"{stage}_ms", 0.0)
        if ms:
            out.append((stage, ms / 1000))
    return out


def failure_entry(job: Job, cmd: Finish, at: float) -> dict[str, Any]:
    """A failed job as the operator page lists it."""
    return {
        "at": at,
        "job_id": job.job_id,
        "trace_id": job.trace_id,
        "session_id": job.session_id,
        "utterance_index": job.utterance_index,
        "tgt_lang": job.tgt_lang,
        "code": cmd.error_code,
        "reason": cmd.error_message,
        "attempts": job.attempt_id,
    }
