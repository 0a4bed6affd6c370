"""Encode and decode v1 frames. The only place frames become messages.

Every decode failure becomes a :class:`ProtocolError` with a stable code and a
message naming the field at fault (msgspec reports the JSON path, e.g.
``$.audio``). The size limit is enforced here, before parsing; nesting is bounded
while parsing: msgspec stops at the interpreter's recursion limit (1,000 levels by
default; no v1 message nests deeper than 4) and the frame is refused as
``bad_message`` within microseconds, whatever its size.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .errors import ErrorCode, ProtocolError
from .messages import (
    PROTOCOL_VERSION,
    ClientMessage,
    NodeMessage,
    SchedulerToNode,
    SessionEvent,
)

#: Default largest frame accepted (bytes of JSON text). 60 s of 16 kHz pcm16 in base64 is ~2.6 MB.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_encoder = msgspec.json.Encoder()
_client_decoder: msgspec.json.Decoder[ClientMessage] = msgspec.json.Decoder(ClientMessage)
_node_decoder: msgspec.json.Decoder[NodeMessage] = msgspec.json.Decoder(NodeMessage)
_event_decoder: msgspec.json.Decoder[SessionEvent] = msgspec.json.Decoder(SessionEvent)
_to_node_decoder: msgspec.json.Decoder[SchedulerToNode] = msgspec.json.Decoder(SchedulerToNode)
_generic = msgspec.json.Decoder(dict[str, Any])

_PATH = re.compile(r"at `\$\.?([^`]*)`")
#: A value a client sent is echoed back (and logged) at most this long.
ECHO_CHARS = 64
_QUOTED = re.compile(r"(['`\"])([^'`\"]{" + str(ECHO_CHARS) + r"})[^'`\"]+\1")
_AUDIO_FIELDS = ("audio", "tts_audio")

T = TypeVar("T")


def encode(msg: msgspec.Struct) -> bytes:
    """Encode a message to JSON bytes (send as a text frame)."""
    return _encoder.encode(msg)


def encode_str(msg: msgspec.Struct) -> str:
    return _encoder.encode(msg).decode()


def _check_size(frame: str | bytes, max_bytes: int) -> None:
    size = len(frame)
    if size > max_bytes:
        raise ProtocolError(
            ErrorCode.AUDIO_TOO_LARGE,
            f"frame of {size} bytes exceeds the limit of {max_bytes} bytes",
        )


def excerpt(value: object, limit: int = ECHO_CHARS) -> str:
    """``value`` as text, cut to ``limit`` characters (with how long it was)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _bounded(err: str) -> str:
    """A decoder's message with every quoted value it echoes cut to ECHO_CHARS, and at
    most a few hundred characters in all: nothing a client sends comes back at length."""
    err = _QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)}…{m.group(1)}", err)
    return excerpt(err, 300)


def _field_of(err: str) -> str | None:
    m = _PATH.search(err)
    return m.group(1) if m else None


def _decode(decoder: msgspec.json.Decoder[T], frame: str | bytes, max_bytes: int) -> T:
    _check_size(frame, max_bytes)
    try:
        return decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise _validation_error(frame, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"frame is not valid JSON: {_bounded(str(exc))}") from None
    except RecursionError:  # msgspec's depth guard (the interpreter's recursion limit)
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "frame nests arrays/objects too deeply") from None


def _validation_error(frame: str | bytes, err: str) -> ProtocolError:
    field = _field_of(err)
    if field == "type":
        try:
            raw = _generic.decode(frame)
        except (msgspec.DecodeError, RecursionError):
            raw = {}
        kind = raw.get("type")
        if kind is None:
            return ProtocolError(ErrorCode.BAD_MESSAGE, "missing field `type`")
        return ProtocolError(
            ErrorCode.BAD_MESSAGE, f"unknown message type {excerpt(repr(kind))} (field `type`)"
        )
    if field in _AUDIO_FIELDS and "base64" in err:
        return ProtocolError(ErrorCode.BAD_AUDIO, f"field `{excerpt(field)}` is not valid base64")
    if "Expected `object`" in err and field in (None, ""):
        return ProtocolError(ErrorCode.BAD_MESSAGE, "a frame must be one JSON object")
    return ProtocolError(ErrorCode.BAD_MESSAGE, _bounded(err))


def decode_client(frame: str | bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> ClientMessage:
    """Decode a frame sent by a client on ``/ws/session``."""
    return _decode(_client_decoder, frame, max_bytes)


def decode_node(frame: str | bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> NodeMessage:
    """Decode a frame sent by a node on ``/ws/node``."""
    return _decode(_node_decoder, frame, max_bytes)


def decode_event(frame: str | bytes, max_bytes: int = 64 * 1024 * 1024) -> SessionEvent:
    """Decode a frame the scheduler sent to a client (client side)."""
    return _decode(_event_decoder, frame, max_bytes)


def decode_to_node(frame: str | bytes, max_bytes: int = 64 * 1024 * 1024) -> SchedulerToNode:
    """Decode a frame the scheduler sent to a node (node side)."""
    return _decode(_to_node_decoder, frame, max_bytes)


def with_seq(payload: bytes, seq: int) -> bytes:
    """Number an encoded event: ``{"type":"x",...}`` -> ``{"type":"x","seq":N,...}``.

    Events are encoded with ``seq`` 0 (omitted) and numbered by the state store when
    they enter the session's history; the Redis store does the same splice in Lua.
    """
    end = payload.index(b'"', 9)  # closing quote of the type value after {"type":"
    return b'%s,"seq":%d%s' % (payload[: end + 1], seq, payload[end + 1 :])


#: The one event type a session's transcript keeps (see :func:`transcript_form`).
TRANSCRIBED = b'{"type":"translation_result"'
_SPEECH = re.compile(rb',"tts_audio":"[^"]*"')


def transcript_form(data: bytes) -> bytes | None:
    """What a session's transcript keeps of a numbered event: a ``translation_result``
    without its speech audio (every other field, ``seq`` included); None for any other
    event. A string value cannot hold an unescaped quote, so the pattern only matches the
    field itself. The Redis store does the same in Lua (``redis_scripts``)."""
    if not data.startswith(TRANSCRIBED):
        return None
    return _SPEECH.sub(b"", data, count=1)


_DRAFT = b'{"type":"asr_partial"'
_INDEX = re.compile(rb'"utterance_index":(\d+)')
_TGT = re.compile(rb'"tgt_lang":"([^"]*)"')


def draft_keys(data: bytes) -> tuple[bytes | None, tuple[bytes, ...]]:
    """How an event stands to the drafts in a session's window: an ``asr_partial`` is the
    draft ``<utterance>:<tgt_lang>`` (no target for the transcript so far) and takes the
    place of the one before it; a ``translation_result`` ends its utterance's drafts. The
    Redis store does the same in Lua (``redis_scripts``). Values are top-level fields of
    our own encoding (an index is a number, a language code has no quote)."""
    if data.startswith(_DRAFT):
        utt, tgt = _INDEX.search(data), _TGT.search(data)
        if utt is None:
            return None, ()
        return b"%s:%s" % (utt.group(1), tgt.group(1) if tgt else b""), ()
    if data.startswith(TRANSCRIBED):
        utt, tgt = _INDEX.search(data), _TGT.search(data)
        if utt is None:
            return None, ()
        return None, (b"%s:" % utt.group(1), b"%s:%s" % (utt.group(1), tgt.group(1) if tgt else b""))
    return None, ()


def event_lang(data: bytes) -> str | None:
    """The ``tgt_lang`` of an encoded event (``job_status``, ``translation_result``, a
    translation draft); None for one about no target language. A top-level field of our own
    encoding: a string value cannot hold the unescaped pattern."""
    found = _TGT.search(data)
    return found.group(1).decode() if found else None


def event_type(payload: bytes) -> str:
    end = payload.index(b'"', 9)
    return payload[9:end].decode()


def check_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol_version {version} is not supported; this server speaks {PROTOCOL_VERSION}",
        )
