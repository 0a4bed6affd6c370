"""Logs across real scheduler and node processes, and `linguamesh trace` on them."""

from __future__ import annotations

import json
from pathlib import Path

from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.observability.trace import CHAIN

from ..conftest import SCALE, late_events, of, pcm
from ..faults import FrameProxy, drop_types
from ..procs import node_proc, run_trace, scheduler_proc, wait_log, wait_node


def records(*paths: Path) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


async def test_one_job_logs_every_step_and_trace_shows_a_complete_timeline(tmp_path: Path) -> None:
    async with scheduler_proc(tmp_path) as (url, sched):
        async with node_proc(tmp_path, url) as node:
            await wait_node(url.replace("ws", "http"), "node-p")
            async with SessionClient(url, src="en", tgt="es") as c:
                await c.send_utterance(0, pcm(0.3))
                r = await c.next_result(10 * SCALE)
                trace_id = c.ack.trace_id  # type: ignore[union-attr]
            await wait_log(node.log, "job_result.acked")
    assert r.status == "ok"
    recs = [x for x in records(sched.log, node.log) if x.get("trace_id") == trace_id]
    events = {x["event"] for x in recs}
    for ev in (*CHAIN, "session.created", "utterance.received"):
        assert ev in events, f"{ev} missing from the logs"
    node_recs = [x for x in recs if x.get("component") == "node"]
    assert {x["event"] for x in node_recs} >= {
        "job.received",
        "stage.done",
        "job_result.sent",
        "job_result.acked",
    }
    for x in recs:
        if x.get("job_id"):
            assert x["job_id"] == r.job_id and x.get("session_id") in (None, r.trace_id and c.session_id)
    stages = [x["stage"] for x in node_recs if x["event"] == "stage.done"]
    assert stages == ["asr", "repair", "nmt", "tts"]
    assert (tmp_path / "scheduler.errors.log").exists()

    out = run_trace(trace_id, str(node.log), str(sched.log))  # any order
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok: complete chain, nothing missing" in out.stdout and "!!" not in out.stdout
    for ev in CHAIN:
        assert ev in out.stdout
    assert "node[node-p]" in out.stdout and "scheduler[local]" in out.stdout
    js = run_trace(trace_id, str(sched.log), str(node.log), "--json")
    data = json.loads(js.stdout)
    assert data["ok"] is True and data["jobs"][0]["job_id"] == r.job_id
    by_session = run_trace("--session", c.session_id, str(sched.log), str(node.log))
    assert by_session.returncode == 0 and r.job_id in by_session.stdout


async def test_trace_names_a_result_that_never_reached_the_scheduler(tmp_path: Path) -> None:
    async with scheduler_proc(tmp_path, "--result-timeout", "0.5", "--max-attempts", "1") as (url, sched):
        async with FrameProxy(url, drop_types("job_result")) as proxy:
            async with node_proc(tmp_path, proxy.url) as node:
                await wait_node(url.replace("ws", "http"), "node-p")
                async with SessionClient(url, src="en", tgt="es") as c:
                    await c.send_utterance(0, pcm(0.2))
                    r = await c.next_result(10 * SCALE)
                    trace_id = c.ack.trace_id  # type: ignore[union-attr]
                await wait_log(node.log, "job_result.sent")
    assert r.status == "failed" and r.error is not None and r.error.code == "timeout"
    assert proxy.dropped
    out = run_trace(trace_id, str(sched.log), str(node.log))
    assert out.returncode == 1
    assert "node node-p sent job_result (attempt 1) at" in out.stdout
    assert "scheduler never received it" in out.stdout


async def test_trace_names_a_result_written_to_no_socket(tmp_path: Path) -> None:
    async with scheduler_proc(tmp_path) as (url, sched):
        async with node_proc(tmp_path, url, delay_ms=150) as node:
            await wait_node(url.replace("ws", "http"), "node-p")
            c = SessionClient(url, src="en", tgt="es")
            await c.connect()
            trace_id = c.ack.trace_id  # type: ignore[union-attr]
            await c.send_utterance(0, pcm(0.2))
            await c.disconnect()  # the socket dies before the result
            await wait_log(sched.log, "result.sending")
            await wait_log(node.log, "job_result.acked")
    out = run_trace(trace_id, str(sched.log), str(node.log))
    assert out.returncode == 1
    assert "never written to the client socket (client socket already gone)" in out.stdout
    assert "the client disconnected at" in out.stdout


async def test_trace_names_no_node(tmp_path: Path) -> None:
    async with scheduler_proc(tmp_path, "--pending-timeout", "0.3") as (url, sched):
        async with SessionClient(url, src="en", tgt="es") as c:
            await c.send_utterance(0, pcm(0.2))
            r = await c.next_result(10 * SCALE)
            trace_id = c.ack.trace_id  # type: ignore[union-attr]
    assert r.status == "failed"
    out = run_trace(trace_id, str(sched.log))
    assert out.returncode == 1
    assert (
        "!! no node selected: no_available_pool (job failed: no_available_node)"
        " - no node serves en->es now; no node is connected" in out.stdout
    )
    assert "result.created  status=failed error_code=no_available_node" in out.stdout


def test_trace_cli_errors(tmp_path: Path) -> None:
    out = run_trace("abc", str(tmp_path / "nope.log"))
    assert out.returncode == 2 and "no such log file" in out.stderr
    empty = tmp_path / "empty.log"
    empty.write_text("not json\n")
    out = run_trace("abc", str(empty))
    assert out.returncode == 1 and "no log record with trace_id=abc" in out.stdout


def test_every_event_the_trace_tool_reads_is_logged_somewhere() -> None:
    """The trace tool matches records by event name: each name it relies on must be
    logged by the scheduler, the node or the core (a renamed event would silently break
    the tool). The lifecycle's notes are logged under their kind's value by the job
    observer."""
    import re

    from linguamesh.core.lifecycle import NoteKind
    from linguamesh.observability import trace

    src = Path(trace.__file__).resolve().parents[1]
    logged: set[str] = set()
    for path in src.rglob("*.py"):
        if path.name == "trace.py":
            continue
        text = path.read_text()
        for first_arg in re.findall(r"log\.\w+\(\s*([^,\n]*)", text):  # the event of each log call
            logged |= set(re.findall(r'"([a-z_]+\.[a-z_]+)"', first_arg))
    observer = (src / "scheduler" / "jobs" / "observer.py").read_text()
    assert "log.warning(kind.value" in observer  # every note is logged under its kind's value
    logged |= {kind.value for kind in NoteKind}
    used = set(trace.CHAIN) | trace.NODE_EVENTS
    used |= set(
        re.findall(r'(?:event ==|_first\(steps,)\s*"([a-z_]+\.[a-z_]+)"', Path(trace.__file__).read_text())
    )
    assert len(used) > 20
    missing = sorted(used - logged)
    assert not missing, f"the trace tool reads events nothing logs: {missing}"


def test_a_glob_over_main_and_errors_logs_reads_each_record_once(tmp_path: Path) -> None:
    from linguamesh.observability.trace import build_report, read_records

    warn = '{"event": "job.ack_timeout", "ts": "2026-12-01T10:00:01Z", "job_id": "j1", "trace_id": "t1", "level": "warning", "component": "scheduler"}'
    info = '{"event": "job.created", "ts": "2026-12-01T10:00:00Z", "job_id": "j1", "trace_id": "t1", "level": "info", "component": "scheduler"}'
    (tmp_path / "s.log").write_text(f"{info}\n{warn}\n")
    (tmp_path / "s.errors.log").write_text(f"{warn}\n")
    records, files = read_records(sorted(tmp_path.glob("*.log")))
    assert files == 2 and sorted(r["event"] for r in records) == ["job.ack_timeout", "job.created"]
    report = build_report(records, trace_id="t1", files=files)
    assert [s.event for s in report.jobs[0].steps] == ["job.created", "job.ack_timeout"]


async def test_a_scheduler_killed_and_restarted_is_named_as_the_cause(tmp_path: Path) -> None:
    """Seed 001's case: the scheduler dies with a job in flight and is started again on the
    same port and log file. The trace names the restart (no "still running"); the
    speaker's utterance, sent again in a new session as the page does, is not lost. Logs
    are written with --redact-text: no transcript reaches them."""
    import signal

    from ..procs import start_scheduler_process

    log = tmp_path / "scheduler.log"
    flags = ("--log", "debug", "--redact-text")
    port, first = await start_scheduler_process(*flags, log=log)
    url = f"ws://127.0.0.1:{port}"
    results = []
    try:
        async with node_proc(tmp_path, url, delay_ms=400, flags=("--redact-text",)) as node:
            await wait_node(url.replace("ws", "http"), "node-p")
            c = SessionClient(url, src="en", tgt="es")
            await c.connect()
            old_trace = c.ack.trace_id  # type: ignore[union-attr]
            await c.send_utterance(0, pcm(0.3))
            await wait_log(node.log, "job.received")
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
            await c.disconnect()
            _, second = await start_scheduler_process(*flags, port=port, log=log)
            try:
                await wait_node(url.replace("ws", "http"), "node-p")
                async with SessionClient(url, src="en", tgt="es") as again:  # the page's new session
                    await again.send_utterance(0, pcm(0.3))
                    results.append(await again.next_result(10 * SCALE))
                    results += of(await late_events(again, 0, 1.5 * SCALE), p.TranslationResult)  # duplicates
            finally:
                second.stop()  # graceful: this run ends with process.stopped
    finally:
        first.stop()
    ok = [r for r in results if r.status == "ok"]
    assert len(ok) == 1 and len(results) == 1, results  # 0 lost, 0 duplicated
    recs = records(log, tmp_path / "node-p.log")
    starts = [x for x in recs if x["event"] == "process.started" and x.get("component") == "scheduler"]
    stops = [x for x in recs if x["event"] == "process.stopped" and x.get("component") == "scheduler"]
    assert len(starts) == 2 and starts[0]["boot_id"] != starts[1]["boot_id"]
    assert [x["boot_id"] for x in stops] == [starts[1]["boot_id"]]  # the killed run has none
    # redacted: lengths only, in both processes' logs
    assert "Test utterance" not in log.read_text() + (tmp_path / "node-p.log").read_text()
    created = [x for x in recs if x["event"] == "result.created"]
    assert created and all(x["text_asr"].startswith("<redacted ") for x in created)

    out = run_trace(old_trace, str(log), str(tmp_path / "node-p.log"))
    assert out.returncode == 1, out.stdout
    assert "scheduler[local] was restarted at" in out.stdout, out.stdout
    assert "killed or crashed" in out.stdout and "still running" not in out.stdout
    new = run_trace("--session", again.session_id, str(log), str(tmp_path / "node-p.log"))
    assert new.returncode == 0, new.stdout
    assert "scheduler[local]#2" in new.stdout  # the second run is named as such


def _rec(ts: str, event: str, **fields: object) -> dict:  # type: ignore[type-arg]
    comp = "node" if event in ("job.received", "job_result.sent", "stage.done") else "scheduler"
    return {"ts": f"2026-12-01T10:00:{ts}Z", "event": event, "component": comp, **fields}


def test_a_send_comes_before_its_receipt_and_filters_pick_one_utterance_or_job() -> None:
    from linguamesh.observability.trace import build_report, render

    recs = []
    for u in range(3):
        j = {"job_id": f"j{u}", "trace_id": "t", "session_id": "s", "utterance_index": u, "attempt_id": 1}
        recs += [
            _rec(f"0{u}.000", "job.created", **j),
            # the node logs its receipt before the scheduler's write returned and was logged
            _rec(f"0{u}.100", "job.received", **j, node_id="n"),
            _rec(f"0{u}.101", "job.dispatched", **j),
            _rec(f"0{u}.500", "job_result.received", **j),
            _rec(f"0{u}.502", "job_result.sent", **j, node_id="n"),
        ]
    report = build_report(recs, session_id="s", utterance=1)
    assert [j.job_id for j in report.jobs] == ["j1"]
    assert [s.event for s in report.jobs[0].steps] == [
        "job.created",
        "job.dispatched",
        "job.received",
        "job_result.sent",
        "job_result.received",
    ]
    assert "logged_after_receipt=True" in render(report)
    one = build_report(recs, job_id="j2")
    assert [j.job_id for j in one.jobs] == ["j2"] and one.query == {"job_id": "j2"}
    assert len(build_report(recs, trace_id="t").jobs) == 3


def test_trace_cli_filters(tmp_path: Path) -> None:
    recs = [
        _rec("00.000", "job.created", job_id="ja", trace_id="t", session_id="s", utterance_index=0),
        _rec("00.000", "job.created", job_id="jb", trace_id="t", session_id="s", utterance_index=1),
    ]
    f = tmp_path / "s.log"
    f.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = run_trace("--job", "jb", str(f), "--json")
    assert [j["job_id"] for j in json.loads(out.stdout)["jobs"]] == ["jb"]
    out = run_trace("--session", "s", str(f), "--utterance", "0", "--json")
    assert [j["job_id"] for j in json.loads(out.stdout)["jobs"]] == ["ja"]
    out = run_trace(str(f))
    assert out.returncode == 2
