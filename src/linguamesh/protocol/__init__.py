"""Wire protocol v1: message types, codec and error codes. No I/O."""

from .codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    check_version,
    decode_client,
    decode_event,
    decode_node,
    decode_to_node,
    draft_keys,
    encode,
    encode_str,
    event_lang,
    event_type,
    transcript_form,
    with_seq,
)
from .errors import FATAL_CODES, ErrorCode, ProtocolError
from .messages import *  # noqa: F403
from .messages import PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FATAL_CODES",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "ProtocolError",
    "check_version",
    "decode_client",
    "decode_event",
    "decode_node",
    "decode_to_node",
    "draft_keys",
    "encode",
    "encode_str",
    "event_lang",
    "event_type",
    "transcript_form",
    "with_seq",
]
