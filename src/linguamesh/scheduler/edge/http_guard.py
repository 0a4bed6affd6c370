"""The HTTP parser a public server needs: uvicorn's h11 protocol, bounded.

uvicorn's default parser (httptools) takes a request head of any size (an 8 MB header
was answered 200) and a connection may stay open for ever before its first request (a
slowloris, or thousands of idle sockets that lock everyone out at 1,024 descriptors).
This protocol bounds both:

* the request head (request line and headers) is at most MAX_HEAD_BYTES and MAX_HEADERS
  lines, else ``431 Request Header Fields Too Large`` and the connection closes;
* a connection must send its whole request head within HEAD_TIMEOUT seconds of opening
  (or of its previous response), else it is closed.

h11 rather than httptools: it is the parser uvicorn bounds (``h11_max_incomplete_event_size``)
and the one this subclass can watch; HTTP here is pages and the API, the hot path is the
WebSocket frames after the upgrade.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT = 30.0

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 36\r\n\r\nrequest head too large or too many\r\n"
)


class GuardedH11Protocol(H11Protocol):
    #: seconds a connection has to send a whole request head (:func:`guarded` sets it)
    head_timeout = HEAD_TIMEOUT

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._head: bytearray = bytearray()
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # a request head is coming
            self._head += data
            if len(self._head) > MAX_HEAD_BYTES or self._head.count(b"\r\n") > MAX_HEADERS + 1:
                self._refuse()
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or an upgrade)
            self._disarm()
            self._head.clear()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()  # the next request's head has the same deadline

    def _arm_head_deadline(self) -> None:
        self._disarm()
        self._head.clear()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def _refuse(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()


def guarded(head_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class for one server, with its request-head deadline."""
    return type("GuardedH11", (GuardedH11Protocol,), {"head_timeout": head_timeout})


#: Seconds a fragmented WebSocket message may take from its first frame to its last.
FRAGMENT_DEADLINE = 10.0


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol, with a deadline on fragmented messages: a
    client that sends the first frames of a message and then only answers pings would
    hold up to the frame limit for ever; past FRAGMENT_DEADLINE the socket is closed
    (1008). A message's size is bounded by ``ws_max_size`` across its fragments."""

    fragment_deadline = FRAGMENT_DEADLINE

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._fragment_timer: asyncio.TimerHandle | None = None

    def handle_text(self, event: Frame) -> None:
        self._fragment(event.fin)
        super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        self._fragment(event.fin)
        super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if event.fin:
            self._fragment(True)
        super().handle_cont(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fragment(True)
        super().connection_lost(exc)

    def _fragment(self, finished: bool) -> None:
        if finished:
            if self._fragment_timer is not None:
                self._fragment_timer.cancel()
                self._fragment_timer = None
        elif self._fragment_timer is None:
            self._fragment_timer = self.loop.call_later(self.fragment_deadline, self._fragment_late)

    @classmethod
    def with_deadline(cls, seconds: float) -> type[GuardedWebSocketProtocol]:
        """The protocol class for one server, with its fragment deadline."""
        return type("GuardedWebSocket", (cls,), {"fragment_deadline": seconds})

    def _fragment_late(self) -> None:
        self._fragment_timer = None
        if self.transport.is_closing():
            return
        self.frames = []
        self.conn.send_close(1008, "message not finished in time")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
