"""How fast `linguamesh trace` reads big logs: records per second, and time per query.

    python bench/trace.py [--jobs 8000]

Writes a scheduler log and a node log the size of a busy day (each job logs the 16
records of its chain plus session records; a scheduler ``.errors`` file repeats the
warnings, as a glob over a log folder reads it too), then times reading them and
building the report for one trace, one session and one job, as the CLI does.
Bounded: one pass over a fixed number of jobs, files in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from linguamesh.observability.trace import build_report, read_records

SCHED = [
    "job.created", "selection.started", "selection.succeeded", "reservation.succeeded", "job.dispatched",
    "job.acked", "job.started", "job_result.received", "result.created", "result.sending", "result.sent",
]  # fmt: skip
NODE = [
    "job.received",
    "stage.done",
    "stage.done",
    "stage.done",
    "stage.done",
    "job_result.sent",
    "job_result.acked",
]


def write_logs(folder: Path, jobs: int, per_session: int = 50) -> tuple[int, str, str, str]:
    start = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    n = 0
    sched = (folder / "scheduler.log").open("w")
    errors = (folder / "scheduler.errors.log").open("w")
    node = (folder / "node-a.log").open("w")
    for i in range(jobs):
        session = f"s-{i // per_session:06d}"
        job = {
            "trace_id": f"t-{i:08d}",
            "session_id": session,
            "job_id": f"job-{i:08d}",
            "node_id": "node-a",
            "utterance_index": i % per_session,
            "attempt_id": 1,
        }
        t = start + timedelta(seconds=i * 0.5)
        if i % per_session == 0:
            rec = {
                "ts": t.isoformat(),
                "event": "session.created",
                "component": "scheduler",
                "session_id": session,
            }
            sched.write(json.dumps(rec) + "\n")
            n += 1
        for k, ev in enumerate(SCHED):
            rec = {"ts": (t + timedelta(milliseconds=k * 20)).isoformat(), "event": ev, "level": "info",
                   "component": "scheduler", "instance_id": "A", **job}  # fmt: skip
            sched.write(json.dumps(rec) + "\n")
            n += 1
        for k, ev in enumerate(NODE):
            rec = {"ts": (t + timedelta(milliseconds=5 + k * 30)).isoformat(), "event": ev, "level": "info",
                   "component": "node", **job}  # fmt: skip
            node.write(json.dumps(rec) + "\n")
            n += 1
        if i % 100 == 0:  # a warning now and then, in the main log and in its .errors file
            warn = json.dumps({"ts": t.isoformat(), "event": "job.ack_timeout", "level": "warning",
                               "component": "scheduler", **job})  # fmt: skip
            sched.write(warn + "\n")
            errors.write(warn + "\n")
            n += 1
    for f in (sched, errors, node):
        f.close()
    mid = jobs // 2
    return n, f"t-{mid:08d}", f"s-{mid // per_session:06d}", f"job-{mid:08d}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=8000, help="jobs in the logs (18 records each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n, trace_id, session_id, job_id = write_logs(folder, args.jobs)
        files = sorted(folder.glob("*.log"))
        size = sum(f.stat().st_size for f in files) / 1e6
        print(f"{n:,} records ({size:.0f} MB) in {len(files)} files")
        t0 = time.perf_counter()
        records, nfiles = read_records(files)
        read = time.perf_counter() - t0
        print(
            f"read: {read:.2f} s ({len(records) / read:,.0f} records/s; {len(records):,} kept, repeats dropped)"
        )
        for what, kw in (("trace", {"trace_id": trace_id}), ("session", {"session_id": session_id}),
                         ("job", {"job_id": job_id})):  # fmt: skip
            t0 = time.perf_counter()
            report = build_report(records, files=nfiles, **kw)  # type: ignore[arg-type]
            took = time.perf_counter() - t0
            print(f"report for one {what}: {took:.2f} s, {len(report.jobs)} job(s), ok={report.ok}")
        t0 = time.perf_counter()
        records, nfiles = read_records(files)
        build_report(records, trace_id=trace_id, files=nfiles)
        print(f"read + one trace, as `linguamesh trace` does: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
