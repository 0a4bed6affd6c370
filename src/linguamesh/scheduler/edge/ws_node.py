"""``/ws/node``: the node side of protocol v1 (``docs/protocol.md``).

Only node programs connect here: a request with an ``Origin`` header (a web page)
is refused before the handshake. Every frame is handled totally, as on
``/ws/session``: nothing a node sends can raise out of this handler.
"""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocket

from ... import protocol as p
from ...observability.logging import bind, get_logger
from ...protocol import ErrorCode, ProtocolError
from ...state.base import DependencyDown
from ..nodes.registry import NodeConn
from ..service import Scheduler
from ..transport import close_quietly
from .admission import POLICY_VIOLATION, TRY_AGAIN_LATER
from .frames import (
    BAD_FRAME_CODES,
    admit,
    bad_frames,
    cut_for_bad_frames,
    handshake_frames,
    peer_of,
    send_quietly,
)

log = get_logger("linguamesh.scheduler.node")


async def node_endpoint(ws: WebSocket) -> None:
    sched: Scheduler = ws.app.state.scheduler
    if ws.headers.get("origin") is not None:
        log.warning("node.origin_refused", origin=ws.headers.get("origin"), peer=peer_of(ws))
        sched.count("connections_refused", reason="origin")
        await ws.close(POLICY_VIOLATION)  # web pages never connect as nodes: HTTP 403
        return
    ip = await admit(ws, sched.admission, sched.metrics)
    if ip is None:
        return
    nc: NodeConn | None = None
    try:
        # the lambda reads ``nc`` when called: the deadline ends once the node is registered
        async for frame in handshake_frames(ws, sched.config.handshake_timeout, lambda: nc is not None):  # noqa: B023
            if frame is None:
                sched.count("connections_refused", reason="handshake_timeout")
                text = f"no node_register within {sched.config.handshake_timeout:g}s"
                await send_quietly(ws, p.Error(code=ErrorCode.BAD_MESSAGE.value, message=text))
                await close_quietly(ws, POLICY_VIOLATION, "handshake timeout")
                return
            try:
                msg = p.decode_node(frame, sched.config.max_message_bytes)
                if nc is None:
                    if not isinstance(msg, p.NodeRegister):
                        raise ProtocolError(ErrorCode.BAD_MESSAGE, "send node_register first")
                    nc = await sched.register_node(msg, ws)
                    bind(node_id=nc.node_id)
                    continue
                await sched.node_message(nc, msg, frame)
            except DependencyDown as exc:
                log.warning("node.dependency_down", error=str(exc))
                err = p.Error(code="dependency_down", message=f"shared state unavailable: {exc}")
                await send_quietly(ws, err)
                if nc is None:
                    await close_quietly(ws, TRY_AGAIN_LATER, "dependency_down")
                    return
            except ProtocolError as exc:
                log.info("node.bad_input", code=exc.code.value, message=exc.message)
                sched.count("protocol_errors", code=exc.code.value)
                if exc.code in BAD_FRAME_CODES and bad_frames(ws).too_many():
                    await cut_for_bad_frames(ws)
                    return
                await send_quietly(ws, p.Error(code=exc.code.value, message=exc.message, ref=exc.ref))
                if exc.fatal or (nc is None and exc.code is ErrorCode.NODE_ID_IN_USE):
                    await close_quietly(ws, POLICY_VIOLATION, exc.code.value)
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the handler is total: a bug in handling one
                # message must not drop the node (and fail over all its jobs); the message is reported
                log.error("node.handler_failed", error=repr(exc), node_id=nc.node_id if nc else None)
                sched.count("protocol_errors", code="internal")
                err = p.Error(code=ErrorCode.INTERNAL.value, message="the message could not be handled")
                await send_quietly(ws, err)
    finally:
        sched.admission.leave(ip)
        if nc is not None:
            code = getattr(ws.state, "close_code", None)
            graceful = code in (1000, 1001)  # the node closed its socket itself (a stop)
            await sched.node_gone(nc, "closed by the node" if graceful else f"connection lost (code {code})")
