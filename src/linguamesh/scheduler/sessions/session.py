"""A client session held by this instance, split by owner.

* identity, settings and the lifecycle (:class:`~linguamesh.core.session_lifecycle.SessionLifecycle`)
  — the session table (``table.py``) is the only one to change them;
* ``delivery`` — the session's pump into its history and onto its socket (``delivery.py``);
* ``utterances`` — what the intake knows of the session's utterances (``intake.py``) and
  its streamed audio (``stream.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...core.ids import SessionId, TraceId
from ...core.ratelimit import TokenBucket
from ...core.segmenter import Segmenter
from ...core.session_lifecycle import SessionLifecycle

if TYPE_CHECKING:
    from .delivery import Delivery
    from .stream import LiveUtterance


#: A session of an API key counts among the key's open sessions this long (seconds) unless
#: an utterance renews it: the sessions of an instance that died stop counting by themselves.
KEY_SESSION_LAPSE = 600.0


@dataclass(frozen=True, slots=True)
class Speaker:
    """Who an access token admitted: its identity, its API key's id, the key's
    ``max_sessions`` and secret (signs the session's webhooks), and the languages its
    grants name (None: any)."""

    identity: str
    key_id: str
    max_sessions: int | None
    secret: str
    langs: frozenset[str] | None = None


@dataclass(slots=True)
class SessionSettings:
    src_lang: str
    tgt_langs: list[str]
    tts: bool
    partials: bool
    audio_format: str
    sample_rate: int
    preferred_node_id: str | None
    #: server-side end of speech (streamed audio): ms of trailing silence that end an
    #: utterance; None when the client ends its utterances
    end_of_speech_ms: int | None = None
    #: the room whose viewer link follows this session, and the SHA-256 (hex) of its key
    room: str | None = None
    room_key_hash: str | None = None
    #: who the access token said the speaker is, and its API key (``--api-keys``)
    identity: str | None = None
    key_id: str | None = None
    #: when the session was opened (epoch seconds)
    started_at: float = 0.0
    #: what the event is called and who speaks ("": not given)
    title: str = ""
    presenter: str = ""
    #: the languages the speaker's access token grants (None: any); listener languages
    #: outside them are not added
    langs_granted: list[str] | None = None


@dataclass(eq=False, slots=True)
class Utterances:
    """The session's utterances as the intake sees them. Owned by the intake and the
    stream."""

    #: the highest utterance index accepted
    max_index: int = -1
    #: where the session's ``audio_chunk``s open and close utterances (made at the first)
    segmenter: Segmenter | None = None
    #: closes the open streamed utterance when no chunk came for ``chunk_idle_gap``
    idle_timer: asyncio.TimerHandle | None = None
    #: when the open utterance closes for want of chunks (monotonic; None: it does not)
    idle_due: float | None = None
    #: the utterance being spoken, streamed to its node(s) as it arrives
    live: LiveUtterance | None = None
    #: intake limits: (utterances, audio seconds) token buckets, made on first use
    buckets: tuple[TokenBucket, TokenBucket] | None = None
    #: a trickle (audio far slower than speech) was cut: until then the session's
    #: utterances are buffered, holding no streaming slot while they are spoken
    no_live_until: float = float("-inf")
    #: utterances refused as rate_limited since the last log record about it
    refused: int = 0
    refused_logged_at: float = float("-inf")
    #: the utterance (``ref``) whose chunks the scheduler refuses as ``overloaded``: said
    #: once, not for each of its chunks
    overload_told: str | None = None
    overload_told_at: float = 0.0


@dataclass(eq=False, slots=True)
class Session:
    session_id: SessionId
    trace_id: TraceId
    resume_token: str
    view_token: str
    settings: SessionSettings
    life: SessionLifecycle
    delivery: Delivery = field(init=False)
    utterances: Utterances = field(default_factory=Utterances)
    #: the linger timer (the table's), while the lifecycle says it lingers
    linger_timer: asyncio.TimerHandle | None = None
    #: the client address of the socket attached last (rate limits per address)
    peer: str = ""
    #: when the session's count among its API key's open sessions was last renewed
    key_renewed_at: float = 0.0
    #: the secret of its API key when it was opened here (signs its webhooks should the key
    #: be removed meanwhile; never written to the store)
    key_secret: str | None = None
    #: the languages viewers listen to (``lang``), each with when it was first asked for
    #: and when it lapses, as last read
    #: from the store (at most once a second), and when (monotonic)
    listeners: dict[str, tuple[float, float]] = field(default_factory=dict)
    listeners_read_at: float = float("-inf")
    #: languages this session translates into for listeners only (its speaker did not ask
    #: for them): the speaker's socket does not get their events
    listener_langs: set[str] = field(default_factory=set)
