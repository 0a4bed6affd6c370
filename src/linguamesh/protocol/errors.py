"""Stable error codes of wire protocol v1 (``docs/protocol.md``) and the protocol exception.

Exception tree::

    ProtocolError            a frame could not be turned into a valid message
      (code, message, fatal) code is one of ErrorCode; fatal closes the connection
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_MESSAGE = "bad_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAUTHORIZED = "unauthorized"
    UNSUPPORTED_LANGUAGE_PAIR = "unsupported_language_pair"
    AUDIO_TOO_LARGE = "audio_too_large"
    BAD_AUDIO = "bad_audio"
    RATE_LIMITED = "rate_limited"
    NO_AVAILABLE_NODE = "no_available_node"
    NODE_FAILED = "node_failed"
    TIMEOUT = "timeout"
    SESSION_NOT_FOUND = "session_not_found"
    DEPENDENCY_DOWN = "dependency_down"
    INTERNAL = "internal"
    # additions of ours (docs/protocol.md): a peer that does not know them treats them as
    # any other non-fatal error
    #: a node's message about a job attempt that was not assigned to it
    NOT_ASSIGNED = "not_assigned"
    #: a node_register for an id another live connection holds, without that node's own credential
    NODE_ID_IN_USE = "node_id_in_use"
    #: the scheduler is draining (shutting down): the utterance was not accepted; send it
    #: again after reconnecting
    DRAINING = "draining"
    #: our addition: the scheduler holds as much as its memory budget allows; new work
    #: (a session, an utterance, a viewer) is refused for now, what was accepted goes on
    OVERLOADED = "overloaded"
    #: our addition: a limit of the session's API key (its targets, ...) refuses this
    QUOTA_EXCEEDED = "quota_exceeded"


#: Codes after which the connection is closed; every other error leaves it open.
FATAL_CODES = frozenset({ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNAUTHORIZED})


class ProtocolError(Exception):
    """A frame that is not a valid v1 message. ``message`` names the field at fault."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES
