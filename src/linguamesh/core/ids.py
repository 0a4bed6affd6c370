"""Identifier types and their generators."""

from __future__ import annotations

import secrets
import uuid
from typing import NewType

JobId = NewType("JobId", str)
NodeId = NewType("NodeId", str)
SessionId = NewType("SessionId", str)
TraceId = NewType("TraceId", str)


def new_job_id() -> JobId:
    return JobId("job-" + secrets.token_hex(6).upper())


def new_session_id() -> SessionId:
    return SessionId("s-" + secrets.token_hex(6).upper())


def new_trace_id() -> TraceId:
    return TraceId(str(uuid.uuid4()))


def new_token() -> str:
    return secrets.token_urlsafe(24)
