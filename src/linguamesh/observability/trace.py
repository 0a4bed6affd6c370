"""Rebuild a job's timeline from scheduler and node JSON-lines logs, and name what is missing.

What an operator would do by hand — reading two processes' logs side by side to find
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
import time
from collections.abc import Callable, Iterable
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
            "logged_after_receipt",
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


@dataclass
class Boot:
    """One run of a process: from ``process.started`` to ``process.stopped`` (if it stopped by
    itself; a run killed or crashed has no stop record)."""

    boot_id: str
    process: str
    first: datetime
    started: datetime | None = None
    stopped: datetime | None = None
    how: str | None = None
    number: int = 1  # 1 for the first run of this process name in the logs, 2 after a restart


def _boots(records: list[dict[str, Any]]) -> dict[tuple[str, str], Boot]:
    """Every process run in the logs, by (boot id, process name), numbered per process name
    (``linguamesh up`` runs a scheduler and a node in one process: one boot id, two names)."""
    boots: dict[tuple[str, str], Boot] = {}
    for r in records:
        bid = r.get("boot_id")
        if not bid:
            continue
        event = r["event"]
        key = (str(bid), _process(r))
        boot = boots.get(key)
        if boot is None:
            boot = boots[key] = Boot(key[0], key[1], _ts(r))
        if event == "process.started":
            boot.started = _ts(r)
            boot.first = min(boot.first, boot.started)
        elif event == "process.stopped":
            boot.stopped, boot.how = _ts(r), str(r.get("how") or "stopped")
    by_name: dict[str, list[Boot]] = {}
    for b in boots.values():
        by_name.setdefault(b.process, []).append(b)
    for runs in by_name.values():
        for i, b in enumerate(sorted(runs, key=lambda b: b.first), 1):
            b.number = i
    return boots


#: (send, receipt): a sender logs after its write, so the receipt may carry an earlier time
_SENDS = {"job.received": "job.dispatched", "job_result.received": "job_result.sent"}


def _attempt(step: Step) -> Any:
    return step.fields.get("result_attempt", step.fields.get("attempt_id"))


def _causal(steps: list[Step]) -> list[Step]:
    """``steps`` in time order, except that a send comes before its receipt."""
    out = list(steps)
    i = 0
    while i < len(out):
        send = _SENDS.get(out[i].event)
        if send is not None:
            att = _attempt(out[i])
            for j in range(i + 1, len(out)):
                if out[j].event == send and _attempt(out[j]) == att:
                    out.insert(i, out.pop(j))
                    out[i].fields = {**out[i].fields, "logged_after_receipt": True}
                    i += 1
                    break
        i += 1
    return out


def build_report(
    records: list[dict[str, Any]],
    *,
    trace_id: str | None = None,
    session_id: str | None = None,
    job_id: str | None = None,
    utterance: int | None = None,
    files: int = 0,
) -> TraceReport:
    """The timelines of the jobs asked for: by ``trace_id``, by ``session_id`` (every job of
    the session), or one ``job_id``; ``utterance`` keeps one utterance's jobs. Linear in the
    number of records."""
    if trace_id is None and session_id is None and job_id is None:
        raise ValueError("give a trace_id, a session_id or a job_id")
    mine = [
        r
        for r in records
        if (trace_id is not None and r.get("trace_id") == trace_id)
        or (session_id is not None and r.get("session_id") == session_id)
        or (job_id is not None and r.get("job_id") == job_id)
    ]
    # node records carry the trace_id; pull in scheduler records of the same jobs that lack it
    job_ids = {r["job_id"] for r in mine if r.get("job_id")}
    if job_id is not None:
        job_ids = {job_id}
        # the session's own records (created, detached, resumed) explain a job's delivery
        sessions = {r.get("session_id") for r in mine if r.get("session_id")}
        mine = [
            r
            for r in records
            if r.get("job_id") == job_id or (not r.get("job_id") and r.get("session_id") in sessions)
        ]
    taken = {id(r) for r in mine}  # by identity: comparing records made this quadratic
    mine += [r for r in records if r.get("job_id") in job_ids and id(r) not in taken]
    if utterance is not None:
        in_utterance = {
            r["job_id"] for r in mine if r.get("job_id") and r.get("utterance_index") == utterance
        }
        mine = [r for r in mine if not r.get("job_id") or r["job_id"] in in_utterance]
    mine.sort(key=_ts)
    boots = _boots(records)
    have_node_logs = any(r.get("component") == "node" for r in records)
    query = {
        k: str(v)
        for k, v in (
            ("trace_id", trace_id),
            ("session_id", session_id),
            ("job_id", job_id),
            ("utterance", utterance),
        )
        if v is not None
    }
    session_steps: list[Step] = []
    jobs: dict[str, JobReport] = {}
    for r in mine:
        step = Step(_ts(r), str(r["event"]), _name(r, boots), r)
        jid = r.get("job_id")
        if not jid:
            session_steps.append(step)
            continue
        rep = jobs.get(jid)
        if rep is None:
            rep = jobs[jid] = JobReport(
                jid, r.get("trace_id"), r.get("session_id"), r.get("utterance_index"), r.get("tgt_lang")
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
        rep.steps = _causal(rep.steps)
        _diagnose(rep, have_node_logs, session_steps, boots)
    ordered = sorted(jobs.values(), key=lambda j: (j.utterance_index or 0, j.tgt_lang or "", j.steps[0].ts))
    return TraceReport(query, session_steps, ordered, diagnosis, files, len(mine))


def _name(rec: dict[str, Any], boots: dict[tuple[str, str], Boot]) -> str:
    """The process that logged ``rec``; a run after a restart is numbered (``scheduler[A]#2``)."""
    base = _process(rec)
    boot = boots.get((str(rec.get("boot_id") or ""), base))
    return f"{base}#{boot.number}" if boot is not None and boot.number > 1 else base


def _ended_run(steps: list[Step], boots: dict[tuple[str, str], Boot]) -> str | None:
    """Why a job never ended, when the scheduler run that had it stopped or was restarted."""
    last: dict[tuple[str, str], Step] = {}
    for s in steps:
        bid = s.fields.get("boot_id")
        # the runs that took the job's steps (a later run's notes about it do not count)
        if bid and s.process.startswith("scheduler") and s.event in CHAIN:
            last[(str(bid), s.process.split("#")[0])] = s
    for key, step in sorted(last.items(), key=lambda kv: kv[1].ts, reverse=True):
        boot = boots.get(key)
        if boot is None:
            continue
        name = key[1]
        later = sorted(
            (b for b in boots.values() if b.process == boot.process and b.first > step.ts and b is not boot),
            key=lambda b: b.first,
        )
        if boot.stopped is not None:
            msg = f"{name} stopped ({boot.how}) at {_hms(boot.stopped)} before the job ended"
            if later:
                msg += f"; it was started again at {_hms(later[0].first)} (boot {later[0].boot_id})"
            return msg
        if later:
            return (
                f"{name} was restarted at {_hms(later[0].first)} (boot {boot.boot_id} -> "
                f"{later[0].boot_id}); the run that had the job left no stop record: it was killed or "
                f"crashed after {_hms(step.ts)} ({step.event})"
            )
    return None


def _first(steps: list[Step], event: str, **match: Any) -> Step | None:
    for s in steps:
        if s.event == event and all(s.fields.get(k) == v for k, v in match.items()):
            return s
    return None


def _diagnose(
    rep: JobReport, have_node_logs: bool, session_steps: list[Step], boots: dict[tuple[str, str], Boot]
) -> None:
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
            d.append(f"no node selected: {failed[-1].fields.get('reason')}{_why(failed[-1])}")
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
        if not d and (why := _ended_run(steps, boots)) is not None:
            d.append(why)
        elif not d:
            d.append(
                "the job has not ended (no result created yet) — still running, or the scheduler stopped"
            )
        return
    if created.fields.get("status") == "failed":
        code = created.fields.get("error_code")
        failed = [s for s in steps if s.event == "selection.failed"]
        if code == "no_available_node" and failed:
            d.append(
                f"no node selected: {failed[-1].fields.get('reason')} (job failed: {code}){_why(failed[-1])}"
            )
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


def _why(step: Step) -> str:
    """A failed selection's explanation (``no node serves en->de now; pools: en-es``)."""
    detail = step.fields.get("detail")
    return f" - {detail}" if detail else ""


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
            gap = "" if prev is None else f"{(s.ts - prev).total_seconds() * 1000:+.1f}ms"
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


def report_files(
    files: list[Path],
    trace_id: str | None,
    session_id: str | None,
    job_id: str | None,
    utterance: int | None,
    as_json: bool,
    progress: Callable[[str], None],
) -> tuple[str, bool]:
    """``linguamesh trace``: the report on what ``files`` say (text or JSON), and whether
    every job has a complete chain; ``progress`` hears how long reading took when slow."""
    started = time.monotonic()
    records, n = read_records(files)
    if not as_json and time.monotonic() - started > 2:
        progress(f"read {len(records):,} records from {n} file(s) in {time.monotonic() - started:.1f} s")
    report = build_report(
        records, trace_id=trace_id, session_id=session_id, job_id=job_id, utterance=utterance, files=n
    )
    if as_json:
        return json.dumps(report.as_dict(), ensure_ascii=False, indent=2, default=str), report.ok
    return render(report), report.ok
