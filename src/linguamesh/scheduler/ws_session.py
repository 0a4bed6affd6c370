"""``/ws/session``: the client side of protocol v1 (DESIGN §3.1)."""

from __future__ import annotations

from starlette.websockets import WebSocket

from .. import protocol as p
from ..observability.logging import bound, get_logger
from ..protocol import ErrorCode, ProtocolError
from ..state.base import DependencyDown
from .frames import text_frames
from .service import Scheduler
from .sessions import Session

log = get_logger("linguamesh.scheduler.session")


async def session_endpoint(ws: WebSocket) -> None:
    sched: Scheduler = ws.app.state.scheduler
    await ws.accept()
    session: Session | None = None
    try:
        async for frame in text_frames(ws):
            try:
                msg = p.decode_client(frame, sched.config.max_message_bytes)
                if isinstance(msg, p.SessionInit):
                    if session is not None:
                        raise ProtocolError(ErrorCode.BAD_MESSAGE, "session_init was already sent")
                    session = await _init(sched, ws, msg)
                    continue
                if session is None:
                    raise ProtocolError(
                        ErrorCode.BAD_MESSAGE,
                        f"send session_init before {type(msg).__name__.lower()}",
                    )
                with bound(session_id=session.session_id, trace_id=session.trace_id):
                    if isinstance(msg, p.Utterance):
                        await sched.utterance(session, msg)
                    elif isinstance(msg, p.AudioChunk):
                        await sched.audio_chunk(session, msg)
                    elif isinstance(msg, p.Ack):
                        await sched.ack_events(session, msg.seq)
                    elif isinstance(msg, p.SessionClose):
                        await sched.close_session(session, ws)
            except DependencyDown as exc:
                # fail closed: nothing of this message was accepted; the connection stays
                log.warning("session.dependency_down", error=str(exc))
                sched.count("protocol_errors", code="dependency_down")
                err = p.Error(code="dependency_down", message=f"shared state unavailable, try again: {exc}")
                await ws.send_text(p.encode_str(err))
            except ProtocolError as exc:
                log.info(
                    "session.bad_input",
                    code=exc.code.value,
                    message=exc.message,
                    session_id=session.session_id if session else None,
                )
                sched.count("protocol_errors", code=exc.code.value)
                await _send_error(ws, session, exc)
                if exc.fatal:
                    await ws.close(1008, exc.code.value)
                    return
    finally:
        if session is not None:
            sched.connection_closed(session, ws)


async def _init(sched: Scheduler, ws: WebSocket, msg: p.SessionInit) -> Session:
    if msg.resume is not None:
        p.check_version(msg.protocol_version)
        session, _ = await sched.resume_session(msg.resume, ws)
        return session
    session = await sched.open_session(msg, ws)
    # the ack is connection-level (seq 0), written before any event of the session
    await ws.send_text(sched.init_ack(session, 0).decode())
    return session


async def _send_error(ws: WebSocket, session: Session | None, exc: ProtocolError) -> None:
    err = p.Error(code=exc.code.value, message=exc.message, ref=exc.ref)
    if session is not None and session.conn is ws:
        session.emit(err)
    else:
        await ws.send_text(p.encode_str(err))
