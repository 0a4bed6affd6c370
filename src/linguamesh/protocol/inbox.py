"""Messages between scheduler instances (their inboxes on Redis; ``docs/cluster.md``).

An inbox entry is a MessagePack array of these, each a map tagged by ``k``.
The short wire names (``i``, ``o``, ``s`` …) are kept because the store's Lua
scripts write ``session`` messages themselves (``state/redis_scripts.py``,
``cmsgpack``); change both together.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Inbox(msgspec.Struct, tag_field="k", omit_defaults=True, kw_only=True):
    #: unique per message, for de-duplication at the receiving edge
    id: str = msgspec.field(name="i", default="")
    #: the sending instance
    sender: str = msgspec.field(name="o", default="")


class Adopt(_Inbox, tag="adopt", kw_only=True):
    """Run job ``job_id`` here: it was handed over because its node is held here."""

    job_id: str = msgspec.field(name="j")
    #: the job (audio as bytes), as ``scheduler.records.job_data`` builds it
    data: dict[str, Any] = msgspec.field(name="d")


class ToNode(_Inbox, tag="to_node", kw_only=True):
    """Write ``frame`` to node ``node_id`` (held here); the sender owns ``job_id``."""

    node_id: str = msgspec.field(name="n")
    frame: str = msgspec.field(name="f")
    job_id: str = msgspec.field(name="j", default="")


class NodeFrame(_Inbox, tag="node_msg", kw_only=True):
    """A frame node ``node_id`` sent to another instance about a job owned here."""

    node_id: str = msgspec.field(name="n")
    job_id: str = msgspec.field(name="j")
    frame: str = msgspec.field(name="f")


class SessionEvents(_Inbox, tag="session", kw_only=True):
    """Session ``session_id`` has events up to ``seq`` in its history; ``events`` carries
    them as ``(seq, event JSON)`` (empty: read them from the history). ``held`` carries
    results the sender pushed that wait in the ordering buffer, as ``(tgt_lang, index,
    result JSON)``: the holder keeps a copy until it sees them released, so an empty
    Redis restart does not lose them."""

    session_id: str = msgspec.field(name="s")
    seq: int = msgspec.field(name="q", default=0)
    events: list[tuple[int, str]] = msgspec.field(name="e", default_factory=list)
    held: list[tuple[str, int, str]] = msgspec.field(name="h", default_factory=list)


class Moved(_Inbox, tag="moved", kw_only=True):
    """Session ``session_id`` is held by the sender now: forget it here."""

    session_id: str = msgspec.field(name="s")


class NodeChanged(_Inbox, tag="node", kw_only=True):
    """Node ``node_id`` registered or changed."""

    node_id: str = msgspec.field(name="n")


class NodeGone(_Inbox, tag="gone", kw_only=True):
    """Node ``node_id`` disconnected."""

    node_id: str = msgspec.field(name="n")


class StreamAudio(_Inbox, tag="audio", kw_only=True):
    """More of the live utterance of job ``job_id`` (handed over to the instance holding
    its node): ``audio`` starts ``offset`` bytes into the utterance; with ``size``, the
    utterance ends there."""

    job_id: str = msgspec.field(name="j")
    offset: int = msgspec.field(name="at")
    audio: bytes = msgspec.field(name="a", default=b"")
    size: int | None = msgspec.field(name="z", default=None)


class SpeechEnd(_Inbox, tag="speech_end", kw_only=True):
    """The node of relayed live job ``job_id`` heard the speech end ``size`` bytes into
    the utterance (to the instance holding session ``session_id``); ``reason`` as in
    ``job_speech_end`` (absent from an older instance: ``pause``)."""

    session_id: str = msgspec.field(name="s")
    job_id: str = msgspec.field(name="j")
    size: int = msgspec.field(name="z")
    reason: str = msgspec.field(name="r", default="pause")


class Query(_Inbox, tag="query", kw_only=True):
    """The operator API asks what only the receiving instance knows (``kind``: ``job``
    with a job id in ``arg``, ``overview``); the answer goes to the sender's inbox."""

    kind: str = msgspec.field(name="q")
    arg: str = msgspec.field(name="a", default="")


class Answer(_Inbox, tag="answer", kw_only=True):
    """The answer to query ``reply_to`` (None: nothing known)."""

    reply_to: str = msgspec.field(name="r")
    data: dict[str, Any] | None = msgspec.field(name="d", default=None)


InboxMessage = (
    Adopt | ToNode | NodeFrame | SessionEvents | Moved | NodeChanged | NodeGone | StreamAudio | SpeechEnd
    | Query | Answer
)  # fmt: skip

# MessagePack: audio travels as bytes, events as their JSON text (no base64, no escaping)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[InboxMessage])


def encode_entry(messages: list[InboxMessage]) -> bytes:
    return _encoder.encode(messages)


def decode_entry(raw: bytes) -> list[InboxMessage]:
    """Raises ``msgspec.DecodeError`` (a ``ValidationError`` among them) for a bad entry."""
    return _decoder.decode(raw)
