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
