"""A client session over ``/ws/session`` with resume.

::

    async with SessionClient("ws://127.0.0.1:5010", src="en", tgt="es") as c:
        await c.send_utterance(0, pcm16_bytes)
        result = await c.next_result()

Events are numbered by the server; the client remembers the last ``seq`` it
saw, drops repeats, and :meth:`resume` reconnects and gets the events it
missed. Utterances no event has named yet are sent again after a resume — once
the replay is read, so one the replay confirms or refuses is not.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .. import protocol as p
from ..tls import client_context


class ClientError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def utterance_ref(ref: str | None) -> int | None:
    """The utterance an error's ``ref`` names ("utterance N"), if it names one."""
    if ref and ref.startswith("utterance "):
        n = ref.split()[1] if len(ref.split()) > 1 else ""
        return int(n) if n.isdigit() else None
    return None


def session_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws/session"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class SessionClient:
    def __init__(
        self,
        url: str,
        *,
        src: str,
        tgt: str,
        extra_tgt_langs: Sequence[str] = (),
        tts: bool = True,
        partials: bool = True,
        audio_format: str = "pcm16",
        sample_rate: int = 16000,
        preferred_node_id: str | None = None,
        open_timeout: float = 10.0,
        end_of_speech: str = "client",
        end_of_speech_ms: int | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = session_url(url)
        #: for a ``wss://`` scheduler with a private certificate authority (PEM bundle)
        self.ca_file = ca_file
        self.init = p.SessionInit(
            protocol_version=p.PROTOCOL_VERSION,
            src_lang=src,
            tgt_lang=tgt,
            extra_tgt_langs=list(extra_tgt_langs),
            tts=tts,
            partials=partials,
            audio_format=audio_format,  # type: ignore[arg-type]
            sample_rate=sample_rate,
            preferred_node_id=preferred_node_id,
            end_of_speech=end_of_speech,  # type: ignore[arg-type]
            end_of_speech_ms=end_of_speech_ms,
        )
        self.open_timeout = open_timeout
        self.ws: ClientConnection | None = None
        self.ack: p.SessionInitAck | None = None
        self.last_seq = 0
        self.duplicates_dropped = 0
        #: utterances sent but not yet confirmed by any event; re-sent after a resume
        #: (the server drops repeats by utterance_index, so re-sending is always safe)
        self.unconfirmed: dict[int, p.Utterance] = {}
        #: events read during a resume, before the client sent anything again
        self._replayed: deque[p.SessionEvent] = deque()

    async def __aenter__(self) -> SessionClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    @property
    def session_id(self) -> str:
        if self.ack is None:
            raise RuntimeError("not connected")
        return self.ack.session_id

    async def _open(self, init: p.SessionInit) -> p.SessionInitAck:
        self.ws = await connect(
            self.url,
            ssl=client_context(self.url, self.ca_file),
            max_size=64 * 1024 * 1024,
            open_timeout=self.open_timeout,
            compression=None,
        )
        try:
            await self.ws.send(p.encode_str(init))
        except ConnectionClosed:
            pass  # refused at once: the server's error frame, if any, is read below
        try:
            first = p.decode_event(await asyncio.wait_for(self.ws.recv(), self.open_timeout))
        except ConnectionClosed as exc:
            await self.ws.close()
            reason = exc.rcvd.reason if exc.rcvd is not None else "connection closed"
            raise ClientError("connection_closed", reason or "connection closed") from None
        if isinstance(first, p.Error):
            await self.ws.close()
            raise ClientError(first.code, first.message)
        if not isinstance(first, p.SessionInitAck):
            raise ClientError("bad_message", f"expected session_init_ack, got {type(first).__name__}")
        return first

    async def connect(self) -> p.SessionInitAck:
        self.ack = await self._open(self.init)
        return self.ack

    async def resume(self) -> int:
        """Reconnect to the same session; returns how many events the server replays."""
        if self.ack is None:
            raise RuntimeError("never connected")
        await self.disconnect()
        init = p.SessionInit(
            protocol_version=p.PROTOCOL_VERSION,
            src_lang=self.init.src_lang,
            tgt_lang=self.init.tgt_lang,
            resume=p.ResumeInfo(
                session_id=self.ack.session_id,
                resume_token=self.ack.resume_token,
                last_seq=self.last_seq,
            ),
        )
        ack = self.ack = await self._open(init)
        # the replay first: it may confirm utterances, or refuse them (an error naming one),
        # and only what it says nothing about is sent again
        for _ in range(ack.replayed):
            try:
                event = await self._next_event(self.open_timeout)
            except TimeoutError:
                break
            if event is not None:
                self._replayed.append(event)
        for msg in list(self.unconfirmed.values()):
            await self.send(msg)
        return ack.replayed

    async def disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def send(self, msg: Any) -> None:
        if self.ws is None:
            raise RuntimeError("not connected")
        await self.ws.send(p.encode_str(msg))

    async def send_raw(self, frame: str | bytes) -> None:
        if self.ws is None:
            raise RuntimeError("not connected")
        await self.ws.send(frame)

    async def send_utterance(
        self,
        index: int,
        audio: bytes,
        *,
        audio_format: str | None = None,
        sample_rate: int | None = None,
        request_id: str | None = None,
    ) -> None:
        msg = p.Utterance(
            utterance_index=index,
            audio=audio,
            audio_format=audio_format,  # type: ignore[arg-type]
            sample_rate=sample_rate,
            request_id=request_id,
        )
        self.unconfirmed[index] = msg
        await self.send(msg)

    async def send_chunk(self, seq: int, audio: bytes, *, is_final: bool = False) -> None:
        await self.send(p.AudioChunk(seq=seq, audio=audio, is_final=is_final))

    async def close_session(self) -> None:
        await self.send(p.SessionClose())

    async def recv(self, timeout: float | None = None) -> p.SessionEvent:
        """The next new event; repeats (seq already seen) are dropped. Raises ConnectionClosed."""
        if self._replayed:
            return self._replayed.popleft()
        if self.ws is None:
            raise RuntimeError("not connected")
        while True:
            event = await self._next_event(timeout)
            if event is not None:
                return event

    async def _next_event(self, timeout: float | None) -> p.SessionEvent | None:
        """One frame off the socket: the event, or None for a repeat. An event naming an
        utterance (by its index, or an error's ``ref``) settles it: it is not sent again."""
        assert self.ws is not None
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        event = p.decode_event(frame)
        index = getattr(event, "utterance_index", None)
        if index is None and isinstance(event, p.Error):
            index = utterance_ref(event.ref)
        if index is not None:
            self.unconfirmed.pop(index, None)
        seq = getattr(event, "seq", 0)
        if seq:
            if seq <= self.last_seq:
                self.duplicates_dropped += 1
                return None
            self.last_seq = seq
        return event

    async def next_result(self, timeout: float | None = 60.0) -> p.TranslationResult:
        while True:
            event = await self.recv(timeout)
            if isinstance(event, p.TranslationResult):
                return event
            if isinstance(event, p.Error):
                raise ClientError(event.code, event.message)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """After :meth:`close_session`: wait for ``session_closed`` (or the socket closing)."""
        try:
            async with asyncio.timeout(timeout):
                while not isinstance(await self.recv(), p.SessionClosed):
                    pass
        except (ConnectionClosed, TimeoutError):
            pass

    async def results(self, n: int, timeout: float = 60.0) -> list[p.TranslationResult]:
        out: list[p.TranslationResult] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(out) < n:
            out.append(await self.next_result(max(0.001, end - loop.time())))
        return out


__all__ = ["ClientError", "ConnectionClosed", "SessionClient", "session_url", "utterance_ref"]
