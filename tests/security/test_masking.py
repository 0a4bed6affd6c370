"""Secrets never reach a log, tracebacks included."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from linguamesh import protocol as p
from linguamesh.observability.logging import configure, get_logger, mask_text, reset

SECRET = "Zq8-resume-secret-3f9a"
VIEW = "Vw7-view-secret-11aa"


def test_secret_fields_and_tracebacks_are_masked(tmp_path: Path) -> None:
    log_file = tmp_path / "sched.log"
    configure("debug", json_file=log_file, console=True, cache=False)
    try:
        log = get_logger("linguamesh.scheduler")
        init = p.SessionInit(
            protocol_version=1,
            src_lang="en",
            tgt_lang="es",
            resume=p.ResumeInfo(session_id="s-1", resume_token=SECRET),
        )
        log.info("session.test", resume_token=SECRET, view_token=VIEW, nested={"token": SECRET, "ok": 1})
        try:
            raise ValueError(f"could not handle {init!r} with view_token={VIEW}")
        except ValueError:
            log.exception("session.handler_failed")
        try:
            json.loads("{" + f'"resume_token": "{SECRET}"')
        except json.JSONDecodeError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application, Bearer %s", SECRET)
        for h in logging.getLogger().handlers:
            h.flush()
    finally:
        reset()
    text = log_file.read_text()
    assert SECRET not in text and VIEW not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["event"] for r in records][:2] == ["session.test", "session.handler_failed"]
    first = records[0]
    assert (
        first["resume_token"] == "***" and first["view_token"] == "***" and first["nested"]["token"] == "***"
    )
    assert first["nested"]["ok"] == 1
    assert "ValueError" in records[1]["exception"] and "resume_token='***'" in records[1]["exception"]
    assert "Bearer ***" in records[2]["event"] and "Traceback" in records[2]["exception"]
    assert (tmp_path / "sched.errors.log").exists() and SECRET not in (
        tmp_path / "sched.errors.log"
    ).read_text()


def test_mask_text_leaves_plain_words_alone() -> None:
    assert mask_text("node token is missing or wrong") == "node token is missing or wrong"
    assert mask_text("GET /view/s-1?token=abc&types=x") == "GET /view/s-1?token=***&types=x"
    assert mask_text('{"view_token":"abc","n":1}') == '{"view_token":"***","n":1}'
