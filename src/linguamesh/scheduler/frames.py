"""Receiving text frames on a Starlette WebSocket, the same way on both endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from .. import protocol as p
from ..protocol import ErrorCode


async def text_frames(ws: WebSocket) -> AsyncIterator[str]:
    """Yield each text frame until the socket closes (by the peer or by us). A binary
    frame gets a ``bad_message`` error and the connection stays open."""
    try:
        while True:
            try:
                yield await ws.receive_text()
            except KeyError:  # a binary frame
                err = p.Error(code=ErrorCode.BAD_MESSAGE.value, message="frames must be text (JSON)")
                await ws.send_text(p.encode_str(err))
    except (WebSocketDisconnect, WebSocketDisconnected):
        return  # the peer left, or we closed the socket (session moved, node replaced)
