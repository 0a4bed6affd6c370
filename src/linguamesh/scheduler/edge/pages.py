"""Browser-facing routes: the pages, session history and live events (SSE), operator API.

* ``/`` speaker page, ``/view/{session_id}`` viewer page, ``/admin`` operator page,
  ``/static/*`` their scripts and styles (shipped in the package; no CDN, no build step).
* ``GET /api/v1/sessions/{id}/events?since=&types=&token=`` — the session's kept events
  after ``since``.
* ``GET /api/v1/sessions/{id}/events/stream?types=&token=`` — Server-Sent Events: replay
  after ``Last-Event-ID`` (header or ``last_event_id``), then live. ``id:`` is the event seq.
* ``GET /api/v1/sessions/{id}/transcript?format=srt|vtt|txt&lang=&token=`` — subtitles
  or plain text of the session's transcript or one translation.
* Viewers present the session's ``view_token`` (from ``session_init_ack``), never the
  speaker's resume token.
* ``/api/v1/admin/overview`` — nodes, pools, jobs in flight, recent failures, counters.
  Open on loopback; elsewhere it needs ``--operator-token`` (Bearer header or ``?token=``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ... import protocol as p
from ...core.history import ReplayGap
from ...core.ids import SessionId
from ...observability.metrics import COUNTERS
from ...state.base import StateStore
from ..service import Scheduler
from ..sessions.session import Session
from ..sessions.transcript import FORMATS, MEDIA_TYPES, cues, render
from ..tokens import same_token
from .access import bearer, error, operator_only
from .api import nodes_data, pools_data

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
KEEPALIVE_S = 15.0


def _sched(request: Request) -> Scheduler:
    return request.app.state.scheduler  # type: ignore[no-any-return]


def _viewer_session(request: Request) -> Session | JSONResponse:
    s = _sched(request)
    session = s.sessions.get(SessionId(request.path_params["session_id"]))
    if session is None or session.life.gone:
        return error(404, "session_not_found", "no such session (or it has expired)")
    token = request.query_params.get("token") or bearer(request) or ""
    if not same_token(token, session.view_token):
        return error(401, "unauthorized", "a valid view token is needed (the share link carries it)")
    return session


def _types(request: Request) -> set[str] | None:
    raw = request.query_params.get("types")
    return {t.strip() for t in raw.split(",") if t.strip()} if raw else None


def _int_param(request: Request, name: str, default: int) -> int | JSONResponse:
    raw = request.query_params.get(name) or request.headers.get(name.replace("_", "-")) or ""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        return error(400, "bad_message", f"{name} must be an integer")
    return value if value >= 0 else error(400, "bad_message", f"{name} must not be negative")


async def history(request: Request) -> Response:
    session = _viewer_session(request)
    if isinstance(session, Response):
        return session
    since = _int_param(request, "since", 0)
    if isinstance(since, Response):
        return since
    types = _types(request)
    try:
        events = await _sched(request).store.events_since(session.session_id, since)
    except ReplayGap as exc:
        return error(410, "session_not_found", f"cannot replay: {exc}")
    out = [json.loads(data) for _, data in events if types is None or p.event_type(data) in types]
    last_seq = await _sched(request).store.last_seq(session.session_id)
    return JSONResponse({"session_id": session.session_id, "last_seq": last_seq, "events": out})


async def transcript(request: Request) -> Response:
    """``GET /api/v1/sessions/{id}/transcript?format=srt|vtt|txt&lang=…&token=…`` — the
    session's transcript (``lang`` = its source language) or translation as subtitles
    with utterance times, or plain text (``transcript.py``)."""
    session = _viewer_session(request)
    if isinstance(session, Response):
        return session
    fmt = request.query_params.get("format", "srt")
    if fmt not in FORMATS:
        return error(400, "bad_message", f"format must be one of {', '.join(FORMATS)}")
    st = session.settings
    lang = request.query_params.get("lang") or st.tgt_langs[0]
    if lang != st.src_lang and lang not in st.tgt_langs:
        known = ", ".join([st.src_lang, *st.tgt_langs])
        return error(400, "bad_message", f"lang {lang!r} is not in this session ({known})")
    try:
        events = await _sched(request).store.events_since(session.session_id, 0)
    except ReplayGap as exc:
        return error(410, "session_not_found", f"cannot read the session's history: {exc}")
    results = [json.loads(data) for _, data in events if p.event_type(data) == "translation_result"]
    body = render(cues(results, lang, st.src_lang), fmt)
    name = f"linguamesh-{session.session_id}-{lang}.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(body, media_type=f"{MEDIA_TYPES[fmt]}; charset=utf-8", headers=headers)


async def room(request: Request) -> Response:
    """``GET /api/v1/rooms/{room}`` — the session a room's viewer link shows now, with its
    view token (the room id in the link is the viewer's capability, as the token is)."""
    s = _sched(request)
    found = s.table.rooms.get(request.path_params["room"])
    if (
        found is None
        or found.session_id not in s.sessions
        or s.sessions[SessionId(found.session_id)].life.gone
    ):
        return error(404, "session_not_found", "no session shows in this room now; it may start again soon")
    return JSONResponse({"session_id": found.session_id, "view_token": found.view_token})


async def _kept_since(store: StateStore, session_id: SessionId, last: int) -> list[tuple[int, bytes]]:
    """The events after ``last`` that are still kept: a viewer who joins late (or comes
    back after the window moved on) gets what the history holds, never an error."""
    for _ in range(3):  # the window may move on between two reads
        try:
            return await store.events_since(session_id, last)
        except ReplayGap as gap:
            if gap.kept_from is None:  # ahead of the session: nothing to replay, live from here
                return []
            last = gap.kept_from - 1
    return []


async def stream(request: Request) -> Response:
    session = _viewer_session(request)
    if isinstance(session, Response):
        return session
    last = _int_param(request, "last_event_id", 0)
    if isinstance(last, Response):
        return last
    types = _types(request)
    store = _sched(request).store
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    session.delivery.subscribers.add(queue)  # subscribe first, then replay: nothing falls in between
    try:
        replay = await _kept_since(store, session.session_id, last)
    except BaseException:  # the store failed: no stream, and no subscriber left behind
        session.delivery.subscribers.discard(queue)
        raise

    def frame(seq: int, data: bytes) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, p.event_type(data).encode(), data)

    async def body() -> AsyncIterator[bytes]:
        sent = last
        try:
            yield b"retry: 1000\n\n"
            for seq, data in replay:
                if types is None or p.event_type(data) in types:
                    yield frame(seq, data)
                sent = max(sent, seq)
            while True:
                try:
                    seq, data = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if seq < 0:  # dropped as too slow
                    return
                if seq <= sent:
                    continue
                sent = seq
                if types is None or p.event_type(data) in types:
                    yield frame(seq, data)
        finally:
            session.delivery.subscribers.discard(queue)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


@operator_only
async def admin_overview(request: Request) -> Response:
    s = _sched(request)
    now = s.clock()
    jobs = [
        {
            "job_id": j.job_id,
            "trace_id": j.trace_id,
            "session_id": j.session_id,
            "utterance_index": j.utterance_index,
            "pair": j.pair,
            "state": j.state.value,
            "attempt_id": j.attempt_id,
            "node_id": j.node_id,
            "age_s": round(now - j.created_at, 3),
            "last_reason": j.last_reason,
        }
        for j in (r.job for r in s.runner.runs.values())
    ]
    recent = [
        {"job_id": j.job_id, "trace_id": j.trace_id, "state": j.state.value, "node_id": j.node_id,
         "utterance_index": j.utterance_index, "pair": j.pair,
         "ms": round(((j.finished_at or now) - j.created_at) * 1000, 1)}
        for j in list(s.runner.finished.values())[-50:]
    ]  # fmt: skip
    counters: dict[str, float] = {}
    for (name, labels), value in s.metrics.counters.values.items():
        if value == 0 and labels:  # the label values published at 0 from the start: noise here
            continue
        names = COUNTERS[name][1]
        pairs = ",".join(f"{k}={v}" for k, v in zip(names, labels, strict=True) if v)
        counters[name + (f"{{{pairs}}}" if pairs else "")] = value
    return JSONResponse(
        {
            "instance_id": s.config.instance_id,
            "time": time.time(),
            "nodes": nodes_data(s),
            "pools": pools_data(s),
            "jobs_in_flight": jobs,
            "recent_jobs": recent[::-1],
            "failures": list(s.runner.observer.failures)[::-1],
            "counters": counters,
            "sessions": len(s.sessions),
            "queue_depth": len(s.dispatcher.waiting),
        }
    )


async def favicon(request: Request) -> Response:
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")


def _page(name: str) -> Any:
    async def page(request: Request) -> Response:
        return FileResponse(WEB_DIR / name, media_type="text/html")

    return page


routes = [
    Route("/", _page("index.html")),
    Route("/view/{session_id}", _page("view.html")),
    Route("/view/room/{room}", _page("view.html")),
    Route("/api/v1/rooms/{room}", room),
    Route("/admin", _page("admin.html")),
    Route("/favicon.ico", favicon),
    Route("/api/v1/sessions/{session_id}/events", history),
    Route("/api/v1/sessions/{session_id}/events/stream", stream),
    Route("/api/v1/sessions/{session_id}/transcript", transcript),
    Route("/api/v1/admin/overview", admin_overview),
    Mount("/static", StaticFiles(directory=WEB_DIR), name="static"),
]
