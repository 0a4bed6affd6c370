"""The ``StateStore`` contract shared by the memory and Redis stores.

All methods are async so a networked store fits; the memory store answers at
once. One contract test suite (``tests/contract``) runs against both.

* Nodes: registry and pool membership. Selection reads nodes through
  :meth:`StateStore.nodes` — a synchronous
  :class:`~linguamesh.core.selection.NodeSource` view the store keeps current
  (the Redis store mirrors the shared registry locally) — so selection stays
  pure and cheap. Capacity is decided by :meth:`reserve`, atomically.
* Sessions: the record needed to resume a session on any instance, and its
  owner (the instance holding the client's socket).
* Events: a session's history is the single ordered channel of its events.
  The store numbers events (``seq``) as they enter it, and
  :meth:`push_result` releases translation results in ``utterance_index``
  order per ``(session, tgt_lang)`` — atomically, whichever instance calls.
* Transcripts: a session's finished results (no speech audio), kept apart from the
  replay window for the whole session and ``transcript_retention`` seconds after it
  ends, with what a viewer needs to read them (:class:`TranscriptInfo`). Every result
  the history numbers enters the transcript in the same step. :meth:`StateStore.replay`
  joins the two: the transcript below the window, then the window.
* Rooms: a viewer link's room and the session it shows now.
* Jobs: records with owner, state and attempt, so a live instance can take
  over the jobs of a dead one; only the owner may change a job.
* Instances: liveness and inboxes for cross-instance routing (Redis only; the
  memory store is one instance and needs none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.ids import JobId, NodeId, SessionId
from ..core.nodes import NodeView
from ..core.ordering import REMEMBERED
from ..core.selection import NodeSource


@dataclass(frozen=True, slots=True)
class JobEnd:
    """A job that ended with the result being pushed: its record is finished and, with
    ``release``, its slot (node, attempt) released in the same step as the push."""

    job_id: JobId
    owner: str
    release: tuple[NodeId, int] | None = None


@dataclass(slots=True)
class Handover:
    """A reservation that hands its job to the instance holding the node: the record's
    owner becomes ``to_instance`` and, where the store routes between instances,
    ``message`` (an inbox entry carrying the job) goes to that instance's inbox in the
    same step (``sent`` is then set). Atomic, so no crash can leave a job owned by an
    instance that never heard of it."""

    to_instance: str
    message: bytes
    sent: bool = False


@dataclass(slots=True)
class Notify:
    """Tell ``to_instance`` (the session's holder) about the events an append numbers, in
    the same step, carrying them; ``sent`` is set when the store did (a store with no
    inboxes leaves it unset, and the caller tells the holder itself)."""

    to_instance: str
    message_id: str
    sender: str
    sent: bool = False


@dataclass(slots=True)
class KnownOrder:
    """What a session's holder knows of one target language's ordering state: the indices
    whose results it saw released, and the results it knows are held in the buffer behind
    an earlier, unfinished one (pushed here, or told by the instance that pushed them).
    Redis keeps no copy of the buffer when it restarts empty; with this, the holder
    writes it back (:meth:`StateStore.restore_session`)."""

    released: set[int] = field(default_factory=set)
    held: dict[int, bytes] = field(default_factory=dict)

    def hold(self, index: int, payload: bytes) -> None:
        if index not in self.released:
            self.held[index] = payload

    def release(self, index: int) -> None:
        self.held.pop(index, None)
        released = self.released
        released.add(index)
        # bounded as the ordering state's own memory of delivered indices: the oldest go
        if len(released) > REMEMBERED:
            for i in sorted(released)[: len(released) - REMEMBERED // 2]:
                released.discard(i)


class DependencyDown(Exception):
    """The shared state backend cannot be reached; fail closed."""


class SessionStateLost(DependencyDown):
    """A session's event numbering is not in the store (Redis restarted empty, or it
    expired): events must not be numbered from 1 again. The session's holder writes it
    back (``restore_session``) and tries again; anyone else waits for the holder."""


@dataclass
class SessionRecord:
    session_id: str
    trace_id: str
    resume_token: str
    view_token: str
    settings: dict[str, Any]
    owner: str
    max_index: int = -1
    #: what the session used, charged to its API key: audio_seconds, utterances, jobs
    usage: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class TranscriptInfo:
    """What a viewer needs to read a session's transcript on any instance, while the
    session lives and after it ended (``ended_at``: epoch seconds)."""

    session_id: str
    view_token: str
    src_lang: str
    tgt_langs: list[str]
    trace_id: str = ""
    ended_at: float | None = None
    #: the room whose viewer link showed the session (access tokens may grant a room)
    room: str | None = None
    #: what the event is called and who speaks (``session_init``; "": not given)
    title: str = ""
    presenter: str = ""
    #: the speaker's API key and the languages its access token grants (None: any): what
    #: a listener language on any instance is held to
    key_id: str | None = None
    langs_granted: list[str] | None = None


@dataclass(slots=True)
class RoomRecord:
    """A room: the session its viewer link shows now. ``key_hash``: SHA-256 of the key
    that created it (only that key may point it elsewhere)."""

    key_hash: bytes
    session_id: str
    view_token: str


@dataclass
class JobRecord:
    """What another instance needs to take a job over."""

    job_id: str
    owner: str
    state: str
    attempt_id: int
    node_id: str | None
    deadline: float  # wall-clock seconds; the sweeper claims jobs past it whose owner is dead
    data: dict[str, Any] = field(default_factory=dict)  # the job itself (audio included)
    #: the job's trace (W3C ``traceparent`` of its root span): an instance that takes the
    #: job over continues it
    traceparent: str | None = None


class StateStore(Protocol):
    # nodes ---------------------------------------------------------------
    async def register_node(self, node: NodeView, owner: str) -> None: ...

    async def remove_node(self, node_id: NodeId, owner: str | None = None) -> None:
        """Forget the node (only if ``owner`` still holds it, when given)."""
        ...

    async def heartbeat(self, node_id: NodeId, running_jobs: int, now: float) -> None: ...

    def nodes(self) -> NodeSource: ...

    def node_owner(self, node_id: NodeId) -> str | None: ...

    # reservations --------------------------------------------------------
    async def reserve(
        self,
        node_id: NodeId,
        job_id: JobId,
        attempt_id: int,
        ttl: float,
        record: JobRecord | None = None,
        handover: Handover | None = None,
    ) -> bool:
        """Atomically take a slot on ``node_id``; False when full or unknown.

        With ``record``, the job record is saved in the same step when the slot is taken
        (if ``record.owner`` owns the job); with ``handover`` too, the job passes to
        another instance at the same time (see :class:`Handover`)."""
        ...

    async def release(self, node_id: NodeId, job_id: JobId, attempt_id: int) -> bool: ...

    # idempotency ---------------------------------------------------------
    async def bind_request(self, session_id: SessionId, key: str, job_id: JobId) -> JobId | None:
        """Bind ``key`` to ``job_id`` unless bound already; return the earlier job id if so."""
        ...

    async def lookup_request(self, session_id: SessionId, key: str) -> JobId | None: ...

    async def accept_utterance(
        self,
        session_id: SessionId,
        index: int,
        request_id: str | None,
        jobs: list[JobRecord],
        tgt_langs: list[str],
    ) -> str | None:
        """All or nothing, in one step: refuse a repeated index (``"index"``) or request id
        (``"request"``); otherwise bind both, raise the session's max index, expect a result
        per target language and save the job records. None when accepted."""
        ...

    # sessions ------------------------------------------------------------
    async def create_session(self, record: SessionRecord, ttl: float) -> None: ...

    async def restore_session(
        self,
        record: SessionRecord,
        last_seq: int,
        ttl: float,
        order: dict[str, KnownOrder] | None = None,
    ) -> list[tuple[int, bytes]]:
        """Write a session back after the store lost it; its events go on after ``last_seq``.
        With ``order`` (per target language), the ordering state is written back too: its
        released indices stay refused, its held results wait again, and those no longer
        behind an expected index are released — returned, for the holder to deliver."""
        ...

    async def load_session(self, session_id: SessionId) -> SessionRecord | None: ...

    async def claim_session(self, session_id: SessionId, owner: str, ttl: float) -> str | None:
        """Make ``owner`` the session's owner; return the previous owner."""
        ...

    async def session_owner(self, session_id: SessionId) -> str | None: ...

    async def set_max_index(self, session_id: SessionId, index: int) -> None: ...

    # session events ------------------------------------------------------
    async def append_events(
        self, session_id: SessionId, payloads: list[bytes], notify: Notify | None = None
    ) -> list[tuple[int, bytes]]:
        """Number the encoded events (seq 0 / absent) and keep them; return (seq, bytes)."""
        ...

    async def expect_result(self, session_id: SessionId, tgt_lang: str, index: int) -> None:
        """A job for ``index`` exists: results after it wait for it."""
        ...

    async def push_result(
        self,
        session_id: SessionId,
        tgt_lang: str,
        index: int,
        payload: bytes,
        end: JobEnd | None = None,
        notify: Notify | None = None,
    ) -> list[tuple[int, bytes]]:
        """Record a finished result; append and return every result now deliverable, in order.
        With ``end``, :meth:`finish_job` first, in the same step. Raises NotExpected when
        ``index`` is not expected (the ordering state was lost); ``end`` still applies."""
        ...

    async def append_and_push(
        self,
        session_id: SessionId,
        payloads: list[bytes],
        tgt_lang: str,
        index: int,
        result: bytes,
        end: JobEnd | None = None,
        notify: Notify | None = None,
    ) -> list[tuple[int, bytes]]:
        """:meth:`append_events` then :meth:`push_result`, in one round trip; returns both
        lists of events together, in seq order. On NotExpected the events stay appended."""
        ...

    async def events_since(self, session_id: SessionId, last_seq: int) -> list[tuple[int, bytes]]:
        """Every kept event after ``last_seq``; raises ReplayGap when some are gone."""
        ...

    async def replay(
        self, session_id: SessionId, last_seq: int, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Every event after ``last_seq`` a client needs, never a gap: the transcript's
        results the window no longer holds, then the window (``core.history.compacted``);
        with ``limit``, the first that many (read on from the last one for the rest).
        Raises ReplayGap only when ``last_seq`` is ahead of the session."""
        ...

    async def transcript(self, session_id: SessionId) -> list[tuple[int, bytes]]:
        """The session's finished results in seq order (each as numbered, without speech)."""
        ...

    async def transcript_info(self, session_id: SessionId) -> TranscriptInfo | None:
        """None when the session never existed or its transcript's retention is over."""
        ...

    async def last_seq(self, session_id: SessionId) -> int: ...

    async def ack_events(self, session_id: SessionId, seq: int) -> None: ...

    async def drop_session(self, session_id: SessionId) -> None:
        """The session ended: its state goes; its transcript stays for the retention time."""
        ...

    # listeners -----------------------------------------------------------
    async def touch_listener(self, session_id: SessionId, lang: str, now: float, until: float) -> None:
        """A viewer listens to the session in ``lang`` until ``until`` (epoch seconds)
        unless touched again; ``now`` is remembered the first time (first come, first
        served). Kept until the session is dropped."""
        ...

    async def listeners(self, session_id: SessionId) -> dict[str, tuple[float, float]]:
        """The session's listener languages: when each was first asked for and when it
        lapses (maybe past)."""
        ...

    # rooms ---------------------------------------------------------------
    async def claim_room(self, room: str, record: RoomRecord) -> bool:
        """Point ``room`` at ``record``'s session, unless another key created the room."""
        ...

    async def room(self, room: str) -> RoomRecord | None: ...

    async def room_sessions(self, room: str) -> list[str]:
        """Every session that showed in ``room``, oldest first (the newest
        ``MAX_ROOM_SESSIONS``): the whole event's transcript."""
        ...

    # API keys: quotas and usage ------------------------------------------
    async def open_key_session(self, key_id: str, session_id: str, most: int | None, ttl: float) -> bool:
        """Count a session of ``key_id`` open (for ``ttl`` s unless renewed or closed) if the
        key has fewer than ``most`` open; False when it has as many. Across instances."""
        ...

    async def close_key_session(self, key_id: str, session_id: str) -> None: ...

    async def charge_key(
        self,
        key_id: str,
        seconds: float,
        per_hour: int | None,
        now: float,
        utterances: int = 0,
        jobs: int = 0,
        session_id: str | None = None,
    ) -> bool:
        """Charge ``seconds`` of audio to the key's clock hour; False (nothing charged) when
        that would pass ``per_hour`` (None: no limit). What is charged is counted in the
        key's usage, with ``utterances`` and ``jobs``, and in the usage of the session
        ``session_id`` (its record's ``usage``) while it exists: one round trip."""
        ...

    async def add_usage(self, key_id: str, **amounts: float) -> None:
        """Add to the key's usage totals (sessions, utterances, jobs, audio_seconds)."""
        ...

    async def usage(self) -> dict[str, dict[str, float]]:
        """Every key's usage totals, across instances."""
        ...

    # jobs ----------------------------------------------------------------
    async def save_job(self, record: JobRecord) -> bool:
        """Write the record if ``record.owner`` owns the job (or it is new); False otherwise."""
        ...

    async def load_job(self, job_id: JobId) -> JobRecord | None: ...

    async def finish_job(self, job_id: JobId, owner: str, release: tuple[NodeId, int] | None = None) -> None:
        """The job ended: it leaves the takeover index (its record stays a while); with
        ``release``, the slot of (node, attempt) is released in the same step."""
        ...

    async def claim_expired_jobs(
        self,
        owner: str,
        now: float,
        live: set[str],
        limit: int,
        *,
        unplaced: bool = False,
        orphaned: bool = False,
    ) -> list[JobRecord]:
        """Atomically take over jobs past their deadline whose owner is not in ``live`` (and,
        where the store knows instances, whose owner's liveness has expired there too, unless
        the owner is ``owner``: its previous run). With ``unplaced``, jobs no node has (state
        ``created``) are taken whatever their deadline: nothing else would move them before it.
        With ``orphaned``, every job of a dead owner is (its node had its chance to come back
        with the result: the caller waits an ack timeout after the death)."""
        ...

    # instances -----------------------------------------------------------
    async def instance_alive(self, instance_id: str, ttl: float) -> None: ...

    async def live_instances(self) -> set[str]: ...

    async def ping(self) -> None:
        """Raise DependencyDown when the store cannot be reached."""
        ...

    async def close(self) -> None: ...
