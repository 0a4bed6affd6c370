"""Receiving text frames on a Starlette WebSocket, the same way on both endpoints."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected, WebSocketState

from ... import protocol as p
from ...observability.metrics import Metrics
from ...protocol import ErrorCode
from ..transport import close_quietly
from .admission import POLICY_VIOLATION, TRY_AGAIN_LATER, Admission

#: More bad frames than this within BAD_FRAME_WINDOW seconds close the socket (1008): a
#: client or node that keeps sending what cannot be applied is cut, not answered for ever.
MAX_BAD_FRAMES = 20
BAD_FRAME_WINDOW = 10.0
#: error codes that mean "this frame was bad" (others are about load or state)
BAD_FRAME_CODES = frozenset({ErrorCode.BAD_MESSAGE, ErrorCode.BAD_AUDIO, ErrorCode.AUDIO_TOO_LARGE,
                             ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNSUPPORTED_LANGUAGE_PAIR})  # fmt: skip


class BadFrames:
    """The times of a socket's recent bad frames."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def too_many(self) -> bool:
        """Count one more bad frame; True when the socket has sent too many lately."""
        now = asyncio.get_running_loop().time()
        times = self.times
        times.append(now)
        while times and times[0] < now - BAD_FRAME_WINDOW:
            times.popleft()
        return len(times) > MAX_BAD_FRAMES


def bad_frames(ws: WebSocket) -> BadFrames:
    counter = getattr(ws.state, "bad_frames", None)
    if counter is None:
        counter = ws.state.bad_frames = BadFrames()
    return counter


async def cut_for_bad_frames(ws: WebSocket) -> None:
    text = f"more than {MAX_BAD_FRAMES} bad frames in {BAD_FRAME_WINDOW:g}s: closing"
    await send_quietly(ws, p.Error(code=ErrorCode.BAD_MESSAGE.value, message=text))
    await close_quietly(ws, POLICY_VIOLATION, "too many bad frames")


async def text_frames(ws: WebSocket) -> AsyncGenerator[str, None]:
    """Yield each text frame until the socket closes (by the peer or by us). A binary
    frame gets a ``bad_message`` error and the connection stays open."""
    try:
        while True:
            if ws.application_state != WebSocketState.CONNECTED:
                return  # we closed the socket (session moved, node replaced)
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
            text = message.get("text")
            if text is None:  # a binary frame
                if bad_frames(ws).too_many():
                    await cut_for_bad_frames(ws)
                    return
                err = p.Error(code=ErrorCode.BAD_MESSAGE.value, message="frames must be text (JSON)")
                await send_quietly(ws, err)
                continue
            yield text
    except WebSocketDisconnect as exc:  # the peer left: how, for the log (a clean close or a loss)
        ws.state.close_code = exc.code
        return
    except WebSocketDisconnected:
        return  # we closed the socket (session moved, node replaced)


async def handshake_frames(
    ws: WebSocket, timeout: float, established: Callable[[], bool]
) -> AsyncIterator[str | None]:
    """:func:`text_frames`, but until ``established()`` every frame must arrive before a
    deadline ``timeout`` s after the socket opened; past it ``None`` is yielded once and
    the iteration ends (the caller closes the socket)."""
    frames = text_frames(ws)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            try:
                if established():
                    frame = await anext(frames)
                else:
                    async with asyncio.timeout_at(deadline):
                        frame = await anext(frames)
            except StopAsyncIteration:
                return
            except TimeoutError:
                yield None
                return
            yield frame
    finally:
        await frames.aclose()


def peer_of(ws: WebSocket) -> str:
    return ws.client.host if ws.client is not None else "unknown"


async def send_quietly(ws: WebSocket, msg: msgspec.Struct) -> bool:
    """Write one message to a socket that may be gone; True when the write finished."""
    try:
        await ws.send_text(p.encode_str(msg))
        return True
    except Exception:  # noqa: BLE001 - a closed socket raises RuntimeError or a disconnect: either way gone
        return False


async def admit(ws: WebSocket, admission: Admission, metrics: Metrics) -> str | None:
    """Accept the socket and count it against the connection limits; the client's address
    (through trusted proxies), or None when it was refused (``rate_limited``, then close 1013)."""
    await ws.accept()
    ip = admission.client(peer_of(ws), ws.headers).address
    refused = admission.enter(ip)
    if refused is None:
        return ip
    code = ErrorCode.DRAINING if admission.draining else ErrorCode.RATE_LIMITED
    metrics.inc("connections_refused", reason="draining" if admission.draining else "limit")
    await send_quietly(ws, p.Error(code=code.value, message=refused))
    await close_quietly(ws, TRY_AGAIN_LATER, "draining" if admission.draining else "too many connections")
    return None
