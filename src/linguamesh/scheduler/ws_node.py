"""``/ws/node``: the node side of protocol v1 (DESIGN §3.2)."""

from __future__ import annotations

from starlette.websockets import WebSocket

from .. import protocol as p
from ..observability.logging import bind, get_logger
from ..protocol import ErrorCode, ProtocolError
from ..state.base import DependencyDown
from .frames import text_frames
from .registry import NodeConn
from .service import Scheduler

log = get_logger("linguamesh.scheduler.node")


async def node_endpoint(ws: WebSocket) -> None:
    sched: Scheduler = ws.app.state.scheduler
    await ws.accept()
    nc: NodeConn | None = None
    try:
        async for frame in text_frames(ws):
            try:
                msg = p.decode_node(frame, sched.config.max_message_bytes)
                if nc is None:
                    if not isinstance(msg, p.NodeRegister):
                        raise ProtocolError(ErrorCode.BAD_MESSAGE, "send node_register first")
                    nc = await sched.register_node(msg, ws)
                    bind(node_id=nc.node_id)
                    continue
                await sched.node_message(nc, msg)
            except DependencyDown as exc:
                log.warning("node.dependency_down", error=str(exc))
                err = p.Error(code="dependency_down", message=f"shared state unavailable: {exc}")
                await ws.send_text(p.encode_str(err))
                if nc is None:
                    await ws.close(1013, "dependency_down")  # try again later
                    return
            except ProtocolError as exc:
                log.info("node.bad_input", code=exc.code.value, message=exc.message)
                sched.count("protocol_errors", code=exc.code.value)
                await _error(ws, exc)
                if exc.fatal:
                    await ws.close(1008, exc.code.value)
                    return
    finally:
        if nc is not None:
            await sched.node_gone(nc, "connection closed")


async def _error(ws: WebSocket, exc: ProtocolError) -> None:
    await ws.send_text(p.encode_str(p.Error(code=exc.code.value, message=exc.message, ref=exc.ref)))
