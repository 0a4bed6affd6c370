"""Browser-facing routes: the pages, session history and live events (SSE), operator API.

* ``/`` speaker page, ``/view/{session_id}`` viewer page, ``/admin`` operator page,
  ``/static/*`` their scripts and styles (shipped in the package; no CDN, no build step).
* ``GET /api/v1/sessions/{id}/events?since=&types=&token=`` — the session's kept events
  after ``since``.
* ``GET /api/v1/sessions/{id}/events/stream?types=&token=`` — Server-Sent Events: replay
  after ``Last-Event-ID`` (header or ``last_event_id``), then live. ``id:`` is the event seq.
* ``GET /api/v1/sessions/{id}/transcript?format=srt|vtt|txt&lang=&token=`` — subtitles
  or plain text of the session's transcript or one translation.
* ``GET /api/v1/qr.svg?link=`` — a QR code of a viewer link (``edge/qr.py``).
* Viewers present the session's ``view_token`` (from ``session_init_ack``), never the
  speaker's resume token.
* ``/api/v1/admin/overview`` — nodes, pools, jobs in flight, recent failures, counters.
  Open on loopback; elsewhere it needs ``--operator-token`` (Bearer header or ``?token=``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ... import protocol as p
from ...core.history import ReplayGap
from ...core.ids import SessionId
from ...observability.logging import get_logger
from ...state.base import DependencyDown, StateStore
from ..overview import cluster_overview
from ..service import Scheduler
from ..sessions.rooms import ROOM_ID
from ..sessions.session import Session
from ..sessions.transcript import (
    FORMATS,
    MEDIA_TYPES,
    Cue,
    Header,
    cues,
    event_name,
    first_spoken,
    languages,
    render,
)
from ..sessions.viewers import Frames, ViewerQueue
from ..tokens import same_token
from .access import bearer, error, operator_only
from .access_tokens import TokenError
from .listening import Listening, lang_problem
from .qr import qr_svg

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
#: events read from the store at a time for a viewer's replay
REPLAY_PAGE = 200
#: events in one page of the events API, by default and at most
EVENTS_PAGE = 200
EVENTS_PAGE_MAX = 1000

log = get_logger("linguamesh.scheduler.viewers")


def _sched(request: Request) -> Scheduler:
    return request.app.state.scheduler  # type: ignore[no-any-return]


@dataclass(slots=True)
class Viewing:
    """A session a viewer may read: held here (``local``), held by another instance, or
    ended (its transcript is kept for the retention time)."""

    session_id: SessionId
    src_lang: str
    tgt_langs: list[str]
    local: Session | None
    ended: bool
    title: str = ""
    presenter: str = ""
    #: the speaker's API key and the languages its access token grants (None: any)
    key_id: str | None = None
    langs_granted: list[str] | None = None

    def heading(self) -> str:
        """The transcript's name: the event's title and presenter when the speaker gave them."""
        return event_name(self.title, self.presenter) or f"LinguaMesh session {self.session_id}"


async def _viewing(request: Request) -> Viewing | JSONResponse:
    """Any instance answers for any session of the cluster: the session held here, or what
    the shared store keeps for viewers (the transcript's record, with the view token)."""
    s = _sched(request)
    sid = SessionId(request.path_params["session_id"])
    token = request.query_params.get("token") or bearer(request) or ""
    access = request.query_params.get("access_token") or token
    local = s.sessions.get(sid)
    if local is not None and not local.life.gone:
        if not same_token(token, local.view_token) and not _may_view(s, access, local.settings.room):
            return _unauthorized()
        st = local.settings
        return Viewing(
            sid,
            st.src_lang,
            list(st.tgt_langs),
            local,
            False,
            st.title,
            st.presenter,
            st.key_id,
            st.langs_granted,
        )
    if len(sid) > 128:
        return _not_found()
    try:
        info = await s.store.transcript_info(sid)
    except DependencyDown:
        return error(503, "dependency_down", "shared state unavailable, try again")
    if info is None:
        return _not_found()
    if not same_token(token, info.view_token) and not _may_view(s, access, info.room):
        return _unauthorized()
    return Viewing(
        sid, info.src_lang, info.tgt_langs, None, info.ended_at is not None, info.title, info.presenter,
        info.key_id, info.langs_granted,
    )  # fmt: skip


def _may_view(s: Scheduler, token: str, room: str | None) -> bool:
    """An access token (``--api-keys``) that grants ``view``, for the session's room when
    its grants name one."""
    if not s.api_keys.enabled or token.count(".") != 2:
        return False
    try:
        access = s.api_keys.verify(token)
    except TokenError:
        return False
    return access.grants.view and (access.grants.room is None or access.grants.room == room)


def _not_found() -> JSONResponse:
    return error(404, "session_not_found", "no such session (or its transcript's retention is over)")


def _unauthorized() -> JSONResponse:
    return error(401, "unauthorized", "a valid view token is needed (the share link carries it)")


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


async def session_card(request: Request) -> Response:
    """``GET /api/v1/sessions/{id}?token=``: what a viewer page shows of a session (the
    event's name and who speaks, its languages, whether it ended)."""
    v = await _viewing(request)
    if isinstance(v, Response):
        return v
    return JSONResponse(
        {
            "session_id": v.session_id,
            "title": v.title,
            "presenter": v.presenter,
            "src_lang": v.src_lang,
            "tgt_langs": v.tgt_langs,
            "ended": v.ended,
        }
    )


async def history(request: Request) -> Response:
    """``GET …/events?after=&limit=&types=`` (``since`` is ``after``'s older name): the
    session's events after ``after``, at most ``limit`` (200 by default, 1,000 at most) —
    the results the replay window no longer holds from the transcript (without speech),
    then the window. ``next`` is the ``after`` of the next page (None at the end). The
    body is written from the stored bytes: nothing is parsed again."""
    v = await _viewing(request)
    if isinstance(v, Response):
        return v
    after = _int_param(request, "after" if "after" in request.query_params else "since", 0)
    limit = _int_param(request, "limit", EVENTS_PAGE)
    for bad in (after, limit):
        if isinstance(bad, Response):
            return bad
    assert isinstance(after, int) and isinstance(limit, int)
    limit = max(1, min(limit, EVENTS_PAGE_MAX))
    types = _types(request)
    store = _sched(request).store
    try:
        events = await _replay(store, v, after, limit)
        last_seq = await store.last_seq(v.session_id) if not v.ended else None
    except DependencyDown:
        return error(503, "dependency_down", "shared state unavailable, try again")
    more = len(events) == limit
    if last_seq is None:
        last_seq = events[-1][0] if events else after
    chosen = b",".join(data for _, data in events if types is None or p.event_type(data) in types)
    page = b'{"session_id":%s,"last_seq":%d,"next":%s,"events":[%s]}' % (
        json.dumps(v.session_id).encode(),
        last_seq,
        str(events[-1][0]).encode() if more else b"null",
        chosen,
    )
    return Response(page, media_type="application/json")


async def _replay(
    store: StateStore, v: Viewing, last: int, limit: int | None = None
) -> list[tuple[int, bytes]]:
    """What a viewer who saw up to ``last`` gets first: every result (from the transcript
    where the window moved on) and the window's events; the transcript alone for a session
    that ended. Never an error for a late viewer. ``limit``: the first that many."""
    if v.ended:
        entries = [(seq, data) for seq, data in await store.transcript(v.session_id) if seq > last]
        return entries if limit is None else entries[:limit]
    try:
        return await store.replay(v.session_id, last, limit)
    except ReplayGap:  # ahead of the session (its numbering was lost): live from here
        return []


async def transcript(request: Request) -> Response:
    """``GET /api/v1/sessions/{id}/transcript?format=srt|vtt|txt&lang=…&token=…`` — the
    session's transcript (``lang`` = its source language) or translation as subtitles
    with utterance times, or plain text (``transcript.py``)."""
    v = await _viewing(request)
    if isinstance(v, Response):
        return v
    fmt = request.query_params.get("format", "srt")
    if fmt not in FORMATS:
        return error(400, "bad_message", f"format must be one of {', '.join(FORMATS)}")
    lang = request.query_params.get("lang") or (v.tgt_langs[0] if v.tgt_langs else v.src_lang)
    try:  # the whole session's results, however long it ran (the transcript, not the window)
        entries = await _sched(request).store.transcript(v.session_id)
    except DependencyDown:
        return error(503, "dependency_down", "shared state unavailable, try again")
    results = [json.loads(data) for _, data in entries]
    known = [x for x in languages(v.src_lang, v.tgt_langs, results) if x]
    if lang not in known:
        return error(400, "bad_message", f"lang {lang!r} is not in this session ({', '.join(known)})")
    header = Header(v.heading(), first_spoken(results), v.src_lang, lang)
    body = render(cues(results, lang, v.src_lang), fmt, header)
    return _download(body, fmt, f"linguamesh-{v.session_id}-{lang}.{fmt}")


def _download(body: str, fmt: str, name: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(body, media_type=f"{MEDIA_TYPES[fmt]}; charset=utf-8", headers=headers)


async def room_transcript(request: Request) -> Response:
    """``GET /api/v1/rooms/{room}/transcript?format=srt|vtt|txt&lang=…`` — the whole
    event: every session that showed in the room (after End session, a crash, a new
    session), one after the other on one clock. The room id is the capability, as for the
    room's viewers (with access tokens on, a token that grants view for the room)."""
    s = _sched(request)
    room_id = request.path_params["room"]
    if not ROOM_ID.fullmatch(room_id):
        return error(404, "session_not_found", "no such room")
    if s.api_keys.enabled:
        access = request.query_params.get("access_token") or bearer(request) or ""
        if not _may_view(s, access, room_id):
            return error(401, "unauthorized", "an access token that grants view for this room is needed")
    fmt = request.query_params.get("format", "srt")
    if fmt not in FORMATS:
        return error(400, "bad_message", f"format must be one of {', '.join(FORMATS)}")
    lang = request.query_params.get("lang") or ""
    try:
        sessions = []
        for sid in await s.store.room_sessions(room_id):
            info = await s.store.transcript_info(SessionId(sid))
            if info is None:
                continue
            results = [json.loads(d) for _, d in await s.store.transcript(SessionId(sid))]
            if not lang or lang in languages(info.src_lang, info.tgt_langs, results):
                sessions.append((info, results))
    except DependencyDown:
        return error(503, "dependency_down", "shared state unavailable, try again")
    if not sessions:
        return error(404, "session_not_found", "no session of this room (in this language) is kept")
    lang = lang or (sessions[0][0].tgt_langs[0] if sessions[0][0].tgt_langs else sessions[0][0].src_lang)
    starts = [t for _, results in sessions if (t := first_spoken(results)) is not None]
    origin = min(starts) if starts else None
    items: list[Cue] = []
    for info, results in sessions:  # one clock for the event: each session at its own time
        more = cues(results, lang, info.src_lang, origin)
        if items and more and more[0].start < items[-1].end:  # (sessions without times)
            shift = items[-1].end - more[0].start
            more = [Cue(c.index, c.start + shift, c.end + shift, c.text) for c in more]
        items += more
    newest = sessions[-1][0]  # the event's name as the speaker gave it last
    named = event_name(newest.title, newest.presenter)
    title = (
        f"{named} ({len(sessions)} sessions)"
        if named
        else f"LinguaMesh room {room_id} ({len(sessions)} sessions)"
    )
    header = Header(title, origin, sessions[0][0].src_lang, lang)
    return _download(render(items, fmt, header), fmt, f"linguamesh-room-{room_id}-{lang}.{fmt}")


async def room(request: Request) -> Response:
    """``GET /api/v1/rooms/{room}`` — the session a room's viewer link shows now, with its
    view token (the room id in the link is the viewer's capability, as the token is)."""
    s = _sched(request)
    room_id = request.path_params["room"]
    if s.api_keys.enabled:  # the room's view token goes only to a viewer its access token admits
        access = request.query_params.get("access_token") or bearer(request) or ""
        if not _may_view(s, access, room_id):
            return error(401, "unauthorized", "an access token that grants view for this room is needed")
    try:
        found = await s.table.rooms.get(room_id) if ROOM_ID.fullmatch(room_id) else None
        live = found is not None and await s.store.load_session(SessionId(found.session_id)) is not None
    except DependencyDown:
        return error(503, "dependency_down", "shared state unavailable, try again")
    if found is None or not live:
        return error(404, "session_not_found", "no session shows in this room now; it may start again soon")
    local = s.sessions.get(SessionId(found.session_id))
    try:
        if local is not None:
            title, presenter = local.settings.title, local.settings.presenter
        else:
            info = await s.store.transcript_info(SessionId(found.session_id))
            title, presenter = (info.title, info.presenter) if info is not None else ("", "")
    except DependencyDown:
        title, presenter = "", ""
    return JSONResponse(
        {
            "session_id": found.session_id,
            "view_token": found.view_token,
            "title": title,
            "presenter": presenter,
        }
    )


async def stream(request: Request) -> Response:
    """Server-Sent Events: the replay (read from the store in pages), then live events. A
    viewer counts as a connection of its address, and a session has at most
    ``max_viewers_per_session``; a viewer that does not read within ``viewer_write_deadline`` is
    closed, and one whose queue outgrows its bound is dropped (it reconnects with
    ``Last-Event-ID``)."""
    v = await _viewing(request)
    if isinstance(v, Response):
        return v
    last = _int_param(request, "last_event_id", 0)
    if isinstance(last, Response):
        return last
    sched = _sched(request)
    over = sched.budget.over()
    if over is not None:
        return error(503, "overloaded", over)
    peer = request.client.host if request.client is not None else "unknown"
    ip = sched.admission.client(peer, request.headers).address
    refused = sched.admission.enter_viewer(ip, v.session_id)
    if refused is not None:
        sched.count("connections_refused", reason="viewers")
        return error(429, "rate_limited", refused)
    audio = request.query_params.get("audio") in ("1", "true", "yes")
    listening = None
    lang = request.query_params.get("lang")
    if lang:
        problem = lang_problem(lang)
        if problem is not None:
            sched.admission.leave_viewer(ip, v.session_id)
            return error(400, "bad_message", problem)
        most = sched.intake.most_targets(v.key_id)
        granted = frozenset(v.langs_granted) if v.langs_granted is not None else None
        listening = Listening(v.session_id, lang, v.src_lang, v.tgt_langs, most, v.ended, granted)
    return ViewerStream(sched, v, last, _types(request), ip, audio, listening)


class ViewerStream(Response):
    """One viewer's stream, as an ASGI response of its own: every write has a deadline."""

    def __init__(
        self,
        sched: Scheduler,
        v: Viewing,
        last: int,
        types: set[str] | None,
        ip: str,
        audio: bool = False,
        listening: Listening | None = None,
    ) -> None:
        super().__init__(
            media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        # a stream: no content-length (the base class would announce an empty body)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.sched, self.v, self.last, self.types, self.ip = sched, v, last, types, ip
        #: results come with their translated speech only when the viewer asked (``audio=1``)
        self.audio = audio
        #: the viewer's language (``lang``): only its events, and it is translated into
        self.listening = listening

    async def _refresh(self, listening: Listening) -> bytes | None:
        """The viewer's language kept alive; a session held here learns it at once (its
        next utterance is translated into it), one held elsewhere within a second."""
        said = await listening.refresh(self.sched.store)
        if self.v.local is not None and listening.seen:
            self.v.local.listeners = listening.seen
        return said

    def _wanted(self, data: bytes) -> bool:
        if self.types is not None and p.event_type(data) not in self.types:
            return False
        return self.listening is None or self.listening.wants(data)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        sched, v = self.sched, self.v
        queue = ViewerQueue(max_bytes=sched.config.viewer_queue_bytes, audio=self.audio)
        session = v.local
        if session is not None:  # held here: its pump feeds the queue; subscribed before the replay
            session.delivery.subscribers.add(queue)

        async def gone() -> None:  # the viewer closed its connection
            while (await receive())["type"] != "http.disconnect":
                pass

        serving = asyncio.ensure_future(self._serve(send, queue))
        watching = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, watching):
                task.cancel()
            await asyncio.gather(serving, watching, return_exceptions=True)
            if session is not None:
                session.delivery.subscribers.discard(queue)
            elif sched.watch is not None:
                sched.watch.unsubscribe(v.session_id, queue)
            queue.end()
            sched.admission.leave_viewer(self.ip, v.session_id)

    async def _serve(self, send: Any, queue: ViewerQueue) -> None:
        sched, v = self.sched, self.v

        async def write(chunk: bytes) -> None:
            # asyncio.timeout, not wait_for: a cancellation must end the stream at once
            async with asyncio.timeout(sched.config.viewer_write_deadline):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await write(b"retry: 1000\n\n")
            listening = self.listening
            if listening is not None and listening.adds:
                said = await self._refresh(listening)
                if said is not None:
                    await write(said)
            sent = self.last
            while True:  # the replay, a page at a time: nothing pinned for a viewer that stalls
                try:
                    page = await _replay(sched.store, v, sent, REPLAY_PAGE)
                except DependencyDown:
                    return  # the browser reconnects with Last-Event-ID
                for seq, data in page:
                    if self._wanted(data):
                        await write(Frames(seq, data).get(self.audio))
                    sent = max(sent, seq)
                if len(page) < REPLAY_PAGE:
                    break
            if v.local is None and sched.watch is not None and not v.ended:
                sched.watch.subscribe(v.session_id, sent, queue)  # held elsewhere: the store's notices
            beat = sched.config.viewer_heartbeat
            heartbeat = b'event: heartbeat\ndata: {"every_s": %g}\n\n' % beat
            while True:
                if listening is not None and listening.due():  # the listener language stays
                    said = await self._refresh(listening)
                    if said is not None:
                        await write(said)
                try:
                    item = await queue.get(beat)
                except TimeoutError:  # a quiet stream says it is alive (no id: Last-Event-ID stays)
                    await write(heartbeat)
                    continue
                if item is None:  # dropped as too slow, or the session left this instance: reconnect
                    break
                seq, data, frame = item
                if seq <= sent:
                    continue
                sent = seq
                if self._wanted(data):
                    await write(frame)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (TimeoutError, OSError):  # the viewer does not read: its connection is dropped
            log.info("viewer.dropped", session_id=v.session_id, peer=self.ip, reason="write deadline")


@operator_only
async def admin_overview(request: Request) -> Response:
    """Nodes, pools, jobs in flight, recent jobs and failures of the whole cluster (every
    live instance answers for its own), and this instance's counters."""
    return JSONResponse(await cluster_overview(_sched(request)))


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
    Route("/api/v1/rooms/{room}/transcript", room_transcript),
    Route("/api/v1/qr.svg", qr_svg),
    Route("/admin", _page("admin.html")),
    Route("/favicon.ico", favicon),
    Route("/api/v1/sessions/{session_id}", session_card),
    Route("/api/v1/sessions/{session_id}/events", history),
    Route("/api/v1/sessions/{session_id}/events/stream", stream),
    Route("/api/v1/sessions/{session_id}/transcript", transcript),
    Route("/api/v1/admin/overview", admin_overview),
    Mount("/static", StaticFiles(directory=WEB_DIR), name="static"),
]
