"""``/ws/session``: the client side of protocol v1 (``docs/protocol.md``).

Every frame is handled totally: a frame that cannot be applied gets a coded
``error`` and the socket stays open (unless the error is fatal); nothing a client
sends can raise out of this handler. See ``admission.py`` for who may connect.
"""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocket

from ... import protocol as p
from ...observability.logging import bound, get_logger
from ...protocol import ErrorCode, ProtocolError
from ...state.base import DependencyDown
from ..service import Scheduler
from ..sessions.session import Session
from ..transport import close_quietly
from .admission import POLICY_VIOLATION, origin_allowed
from .frames import (
    BAD_FRAME_CODES,
    admit,
    bad_frames,
    cut_for_bad_frames,
    handshake_frames,
    peer_of,
    send_quietly,
)

log = get_logger("linguamesh.scheduler.session")


async def session_endpoint(ws: WebSocket) -> None:
    sched: Scheduler = ws.app.state.scheduler
    # the host the browser used: Host, or what a trusted proxy forwarded
    host = sched.admission.client(peer_of(ws), ws.headers).host
    if not origin_allowed(ws.headers.get("origin"), host, sched.admission.origins):
        log.warning("session.origin_refused", origin=ws.headers.get("origin"), peer=peer_of(ws))
        sched.count("connections_refused", reason="origin")
        await ws.close(POLICY_VIOLATION)  # before the handshake: the browser gets HTTP 403
        return
    ip = await admit(ws, sched.admission, sched.metrics)
    if ip is None:
        return
    session: Session | None = None
    try:
        # the lambda reads ``session`` when called: the deadline ends once the session exists
        async for frame in handshake_frames(ws, sched.config.handshake_timeout, lambda: session is not None):  # noqa: B023
            if frame is None:  # no session within the handshake deadline
                sched.count("connections_refused", reason="handshake_timeout")
                text = f"no session within {sched.config.handshake_timeout:g}s: send session_init first"
                await send_quietly(ws, p.Error(code=ErrorCode.BAD_MESSAGE.value, message=text))
                await close_quietly(ws, POLICY_VIOLATION, "handshake timeout")
                return
            msg = None
            try:
                msg = p.decode_client(frame, sched.config.max_message_bytes)  # msg stays None if not
                if isinstance(msg, p.SessionInit):
                    if session is not None:
                        raise ProtocolError(ErrorCode.BAD_MESSAGE, "session_init was already sent")
                    session = await _init(sched, ws, msg, ip)
                    if session.peer != ip:  # resumed from another address
                        sched.table.set_peer(session, ip)
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
                ref = f"utterance {msg.utterance_index}" if isinstance(msg, p.Utterance) else None
                err = p.Error(
                    code="dependency_down", message=f"shared state unavailable, try again: {exc}", ref=ref
                )
                await send_quietly(ws, err)
            except ProtocolError as exc:
                if exc.code is not ErrorCode.RATE_LIMITED:  # intake logs those, at most once a second
                    log.info(
                        "session.bad_input",
                        code=exc.code.value,
                        message=exc.message,
                        session_id=session.session_id if session else None,
                    )
                sched.count("protocol_errors", code=exc.code.value)
                if exc.code in BAD_FRAME_CODES and bad_frames(ws).too_many():
                    await cut_for_bad_frames(ws)
                    return
                # a frame that could not even be decoded is this socket's problem: its error
                # goes to the socket only, never into the session's history
                await _send_error(ws, session if msg is not None else None, exc)
                if exc.fatal:
                    await close_quietly(ws, POLICY_VIOLATION, exc.code.value)
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the handler is total: a bug in handling one
                # message must not drop the client's socket (or its session); the message is reported
                log.error(
                    "session.handler_failed",
                    error=repr(exc),
                    kind=type(msg).__name__ if msg is not None else None,
                    session_id=session.session_id if session else None,
                )
                sched.count("protocol_errors", code="internal")
                await _send_error(
                    ws, session, ProtocolError(ErrorCode.INTERNAL, "the message could not be handled")
                )
    finally:
        sched.admission.leave(ip)
        if session is not None:
            sched.connection_closed(session, ws)


async def _init(sched: Scheduler, ws: WebSocket, msg: p.SessionInit, ip: str) -> Session:
    if msg.resume is not None:
        p.check_version(msg.protocol_version)
        session, _ = await sched.resume_session(msg.resume, ws)
        return session
    session = await sched.open_session(msg, ws, ip)
    # the ack is connection-level (seq 0), written before any event of the session
    await ws.send_text(sched.init_ack(session, 0).decode())
    return session


async def _send_error(ws: WebSocket, session: Session | None, exc: ProtocolError) -> None:
    err = p.Error(code=exc.code.value, message=exc.message, ref=exc.ref)
    # ``draining`` is about this connection, not the session: written to the socket, never put
    # into the history (a resume elsewhere must not replay a refusal the client re-sent since)
    if session is not None and session.delivery.conn is ws and exc.code is not ErrorCode.DRAINING:
        session.delivery.emit(err)
    else:
        await send_quietly(ws, err)
