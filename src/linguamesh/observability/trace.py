"""Rebuild a job's timeline from scheduler and node JSON-lines logs, and name what is missing.

What seed 001 did by hand — reading two processes' logs side by side to find
the step where a job got lost — as a function: records in (any order, any
number of files), per-job timelines and diagnoses out.

The expected chain of one job (scheduler S, node N)::

    S job.created -> S selection.started -> S selection.succeeded -> S reservation.succeeded
      -> S job.dispatched -> N job.received -> S job.acked -> S job.started -> N stage.done*
      -> N job_result.sent -> S job_result.received -> S result.created -> S result.sending
      -> S result.sent -> N job_result.acked
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

#: Events shown in a timeline; anything else with the trace_id is shown too, marked as extra.
CHAIN = (
    "job.created",
    "selection.started",
    "selection.succeeded",
    "reservation.succeeded",
    "job.dispatched",
    "job.received",
    "job.acked",
    "job.started",
    "stage.done",
    "job_result.sent",
    "job_result.received",
    "result.created",
    "result.sending",
    "result.sent",
    "job_result.acked",
)

NODE_EVENTS = {"job.received", "stage.done", "job_result.sent", "job_result.held", "job_result.acked"}


@dataclass
class Step:
    ts: datetime
    event: str
    process: str
    fields: dict[str, Any]

    def detail(self) -> str:
        f = self.fields
        keys = (
            "stage",
            "duration_ms",
            "reason",
            "fallback_reason",
            "selected_node",
            "status",
            "error_code",
            "dispatch_latency_seconds",
            "success",
            "live",
            "what",
            "text_asr",
            "text_translated",
        )
        parts = [f"{k}={f[k]}" for k in keys if f.get(k) not in (None, "")]
        return " ".join(parts)


@dataclass
class JobReport:
    job_id: str
    trace_id: str | None
    session_id: str | None
    utterance_index: int | None
    tgt_lang: str | None
    steps: list[Step] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "trace_id": self.trace_id,
            "session_id": self.session_id,
            "utterance_index": self.utterance_index,
            "steps": [
                {"ts": s.ts.isoformat(), "event": s.event, "process": s.process, **_plain(s.fields)}
                for s in self.steps
            ],
            "diagnosis": self.diagnosis,
            "notes": self.notes,
        }


@dataclass
class TraceReport:
    query: dict[str, str]
    session_steps: list[Step]
    jobs: list[JobReport]
    diagnosis: list[str]
    files: int
    records: int

    @property
    def ok(self) -> bool:
        return not self.diagnosis and all(not j.diagnosis for j in self.jobs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "ok": self.ok,
            "session_steps": [
                {"ts": s.ts.isoformat(), "event": s.event, "process": s.process} for s in self.session_steps
            ],
            "jobs": [j.as_dict() for j in self.jobs],
            "diagnosis": self.diagnosis,
        }


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    skip = {"event", "ts", "level", "logger", "trace_id", "session_id", "component"}
    return {k: v for k, v in fields.items() if k not in skip}


def read_records(paths: Iterable[str | Path]) -> tuple[list[dict[str, Any]], int]:
    """Every JSON object line of the files (other lines are skipped), each once: a process's
    ``.errors`` log repeats the warnings of its main log, and a glob reads both."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    n = 0
    for path in paths:
        n += 1
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{") or line in seen:
                    continue
                seen.add(line)
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "event" in rec and "ts" in rec:
                    out.append(rec)
    return out, n


def _process(rec: dict[str, Any]) -> str:
    comp = rec.get("component") or str(rec.get("logger", "?")).split(".")[-1]
    if comp == "node":
        return f"node[{rec.get('node_id') or '?'}]"
    if comp == "scheduler":
        return f"scheduler[{rec.get('instance_id') or 'local'}]"
    return str(comp)


def _ts(rec: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(rec["ts"]).replace("Z", "+00:00"))


def build_report(
    records: list[dict[str, Any]],
    *,
    trace_id: str | None = None,
    session_id: str | None = None,
    files: int = 0,
) -> TraceReport:
    if trace_id is None and session_id is None:
        raise ValueError("give a trace_id or a session_id")
    mine = [
        r
        for r in records
        if (trace_id is not None and r.get("trace_id") == trace_id)
        or (session_id is not None and r.get("session_id") == session_id)
    ]
    # node records carry the trace_id; pull in scheduler records of the same jobs that lack it
    job_ids = {r["job_id"] for r in mine if r.get("job_id")}
    taken = {id(r) for r in mine}  # by identity: comparing records made this quadratic
    mine += [r for r in records if r.get("job_id") in job_ids and id(r) not in taken]
    mine.sort(key=_ts)
    have_node_logs = any(r.get("component") == "node" for r in records)
    query = {k: v for k, v in (("trace_id", trace_id), ("session_id", session_id)) if v}
    session_steps: list[Step] = []
    jobs: dict[str, JobReport] = {}
    for r in mine:
        step = Step(_ts(r), str(r["event"]), _process(r), r)
        job_id = r.get("job_id")
        if not job_id:
            session_steps.append(step)
            continue
        rep = jobs.get(job_id)
        if rep is None:
            rep = jobs[job_id] = JobReport(
                job_id, r.get("trace_id"), r.get("session_id"), r.get("utterance_index"), r.get("tgt_lang")
            )
        rep.trace_id = rep.trace_id or r.get("trace_id")
        rep.session_id = rep.session_id or r.get("session_id")
        if rep.utterance_index is None:
            rep.utterance_index = r.get("utterance_index")
        rep.tgt_lang = rep.tgt_lang or r.get("tgt_lang")
        rep.steps.append(step)
    diagnosis: list[str] = []
    if not mine:
        diagnosis.append(
            f"no log record with {', '.join(f'{k}={v}' for k, v in query.items())} in {files} file(s)"
        )
    elif not jobs:
        received = [s for s in session_steps if s.event == "utterance.received"]
        diagnosis.append(
            "utterances were received but no job was created"
            if received
            else "the session exists but no utterance was received"
        )
    for rep in jobs.values():
        _diagnose(rep, have_node_logs, session_steps)
    ordered = sorted(jobs.values(), key=lambda j: (j.utterance_index or 0, j.tgt_lang or "", j.steps[0].ts))
    return TraceReport(query, session_steps, ordered, diagnosis, files, len(mine))


def _first(steps: list[Step], event: str, **match: Any) -> Step | None:
    for s in steps:
        if s.event == event and all(s.fields.get(k) == v for k, v in match.items()):
            return s
    return None


def _diagnose(rep: JobReport, have_node_logs: bool, session_steps: list[Step]) -> None:
    steps = rep.steps
    d = rep.diagnosis
    created = _first(steps, "result.created")
    for s in steps:
        if s.event == "job.failover":
            rep.notes.append(
                f"{_hms(s.ts)} attempt {int(s.fields.get('attempt_id') or 1) - 1} abandoned: "
                f"{s.fields.get('reason')} (node {s.fields.get('from_node')})"
            )
        elif s.event.endswith("_timeout") and s.event.startswith("job."):
            rep.notes.append(f"{_hms(s.ts)} {s.event.split('.')[1].replace('_', ' ')}")
    # node-side: results the node sent that the scheduler never received
    if have_node_logs:
        for sent in (s for s in steps if s.event == "job_result.sent"):
            att = sent.fields.get("attempt_id")
            got = [
                s
                for s in steps
                if s.event in ("job_result.received", "job_result.duplicate")
                and s.fields.get("result_attempt", s.fields.get("attempt_id")) == att
            ]
            if not got:
                d.append(
                    f"node {sent.fields.get('node_id')} sent job_result (attempt {att}) at {_hms(sent.ts)}, "
                    "scheduler never received it"
                )
    if created is None:
        failed = [s for s in steps if s.event == "selection.failed"]
        if not _first(steps, "selection.succeeded") and failed:
            d.append(f"no node selected: {failed[-1].fields.get('reason')}")
        elif _first(steps, "selection.succeeded") and not _first(steps, "job.dispatched"):
            d.append("a node was selected but job_assign was never written to it")
        elif have_node_logs and _first(steps, "job.dispatched") and not _first(steps, "job.received"):
            disp = _first(steps, "job.dispatched")
            assert disp is not None
            d.append(
                f"scheduler wrote job_assign to node {disp.fields.get('node_id')} at {_hms(disp.ts)}, "
                "the node never logged receiving it"
            )
        elif _first(steps, "job_result.received"):
            d.append("scheduler received the result but never created a translation_result")
        elif not d:
            d.append(
                "the job has not ended (no result created yet) — still running, or the scheduler stopped"
            )
        return
    if created.fields.get("status") == "failed":
        code = created.fields.get("error_code")
        failed = [s for s in steps if s.event == "selection.failed"]
        if code == "no_available_node" and failed:
            d.append(f"no node selected: {failed[-1].fields.get('reason')} (job failed: {code})")
        elif code == "timeout":
            last = [s.event for s in steps if s.event.endswith("_timeout")]
            d.append(f"job failed: timeout ({', '.join(last) or 'deadline passed'})")
        else:
            d.append(f"job failed: {code}")
    delivered = _first(steps, "result.sent")
    if delivered is None:
        sending = _first(steps, "result.sending")
        send_failed = _first(steps, "result.send_failed")
        resumed = [s for s in session_steps if s.event == "session.resumed" and s.ts >= created.ts]
        detached = [s for s in session_steps if s.event == "session.detached" and s.ts <= created.ts]
        why = "write failed" if send_failed else ("client socket already gone" if sending else "never queued")
        msg = f"result created at {_hms(created.ts)} but never written to the client socket ({why})"
        if detached:
            msg += f"; the client disconnected at {_hms(detached[-1].ts)}"
        if resumed:
            msg += f"; the client resumed at {_hms(resumed[0].ts)} and got it from the history"
            rep.notes.append(msg)
        else:
            d.append(msg + "; it waits in the session history for a resume")
    if have_node_logs and _first(steps, "job_result.sent") and not _first(steps, "job_result.acked"):
        rep.notes.append("the node never logged the job_result_ack (it will resend after a reconnect)")


def _hms(ts: datetime) -> str:
    return ts.strftime("%H:%M:%S.%f")[:-3]


def render(report: TraceReport) -> str:
    lines: list[str] = []
    q = " ".join(f"{k}={v}" for k, v in report.query.items())
    lines.append(
        f"trace {q}: {len(report.jobs)} job(s), {report.records} records from {report.files} file(s)"
    )
    for s in report.session_steps:
        if s.event in ("session.created", "session.resumed", "session.detached", "session.closed"):
            lines.append(f"  {_hms(s.ts)}  {s.process:<22} {s.event}")
    for d in report.diagnosis:
        lines.append(f"  !! {d}")
    for job in report.jobs:
        lines.append("")
        lines.append(
            f"job {job.job_id}  utterance {job.utterance_index}  -> {job.tgt_lang or '?'}  "
            f"session {job.session_id}  trace {job.trace_id}"
        )
        prev: datetime | None = None
        start = job.steps[0].ts
        for s in job.steps:
            gap = "" if prev is None else f"+{(s.ts - prev).total_seconds() * 1000:.1f}ms"
            total = f"{(s.ts - start).total_seconds() * 1000:8.1f}ms"
            extra = "" if s.event in CHAIN else "  *"
            lines.append(f"  {_hms(s.ts)} {total} {gap:>10}  {s.process:<22} {s.event}{extra}  {s.detail()}")
            prev = s.ts
        for n in job.notes:
            lines.append(f"  note: {n}")
        if job.diagnosis:
            for d in job.diagnosis:
                lines.append(f"  !! {d}")
        else:
            lines.append("  ok: complete chain, nothing missing")
    return "\n".join(lines)
