"""The session table: the client sessions held by this instance.

Opens, resumes (replaying what the client missed), takes over sessions another
instance held, keeps a disconnected session for ``session_linger``, closes
(after its running jobs delivered their results), and routes every event for a
session — here to its delivery, elsewhere through the remote's relay. Every change
of a session's lifecycle goes through :class:`~linguamesh.core.session_lifecycle.SessionLifecycle`
here, and the table carries out the commands it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from ... import protocol as p
from ...core.ids import JobId, SessionId, TraceId, new_session_id, new_token, new_trace_id
from ...core.jobs import Job
from ...core.languages import pair_problem
from ...core.ratelimit import TokenBucket
from ...core.session_lifecycle import (
    ArmLinger,
    CancelLinger,
    Finish,
    Forget,
    SessionCommand,
    SessionLifecycle,
)
from ...observability import tracing
from ...observability.logging import get_logger
from ...observability.metrics import Metrics
from ...protocol import ErrorCode, ProtocolError
from ...state.base import DependencyDown, JobEnd, StateStore
from ..cluster.remote import Remote
from ..config import SchedulerConfig
from ..records import job_fields, session_record, settings_from_record
from ..retry import until_available
from ..tasks import Tasks
from ..tokens import same_token
from ..transport import Transport, close_quietly
from ..webhooks import SessionEvents
from .delivery import Delivery
from .rooms import Rooms, key_hash
from .session import KEY_SESSION_LAPSE, Session, SessionSettings, Speaker

log = get_logger("linguamesh.scheduler")


#: Cancels the running jobs of a session that is forgotten (the runner's ``cancel``).
CancelJobs = Callable[[Iterable[JobId], str], Any]


class SessionTable:
    def __init__(
        self,
        config: SchedulerConfig,
        store: StateStore,
        remote: Remote,
        metrics: Metrics,
        tasks: Tasks,
        clock: Callable[[], float],
        init_ack: Callable[[Session, int], bytes],
        cancel_jobs: CancelJobs,
        events: SessionEvents,
    ) -> None:
        self.config = config
        self.store = store
        self.remote = remote
        self.metrics = metrics
        self.tasks = tasks
        self.clock = clock
        self.init_ack = init_ack
        self.cancel_jobs = cancel_jobs
        #: the webhooks of sessions opened with an access token (``--webhook-url``)
        self.events = events
        self.tracing = tracing.current("scheduler")
        self.sessions: dict[SessionId, Session] = {}
        #: viewer links that outlive a session
        self.rooms = Rooms(store)
        #: sessions held here per client address (alive or lingering), and each address's
        #: budget of new sessions
        self.per_peer: Counter[str] = Counter()
        self._opens: dict[str, TokenBucket] = {}

    def _session(self, **kw: Any) -> Session:
        session = Session(life=SessionLifecycle(self.config.session_linger), **kw)
        session.delivery = Delivery(session, self, self.store, self.tasks)
        session.delivery.max_backlog = self.config.max_client_backlog_bytes
        return session

    # ------------------------------------------------------------------ the lifecycle

    def _apply(self, session: Session, commands: list[SessionCommand]) -> None:
        """Carry out what the session's lifecycle decided, in order."""
        for cmd in commands:
            if isinstance(cmd, ArmLinger):
                session.linger_timer = self.tasks.call_later(cmd.delay, lambda: self._linger_expired(session))
            elif isinstance(cmd, CancelLinger):
                self.tasks.cancel(session.linger_timer)
                session.linger_timer = None
            elif isinstance(cmd, Finish):
                self.tasks.spawn(self._finish(session), "finish-close")
            elif isinstance(cmd, Forget):
                log.info(f"session.{cmd.reason}", trace_id=session.trace_id, session_id=session.session_id)
                self.tasks.spawn(self._forget(session, cmd.reason), f"drop-{session.session_id}")

    def attached(self, session: Session) -> None:
        """The delivery attached a socket (a new session's, or a resume's)."""
        self._apply(session, session.life.attached_socket())

    def detached(self, session: Session) -> None:
        """The delivery's socket is gone (closed, cut, failed write): the session lingers."""
        log.info("session.detached", trace_id=session.trace_id, session_id=session.session_id)
        self._apply(session, session.life.detached_socket())

    def _linger_expired(self, session: Session) -> None:
        session.linger_timer = None
        self._apply(session, session.life.linger_expired())

    async def restore(self, session: Session) -> None:
        """Write a session held here back into a store that lost it, numbering included."""
        delivery = session.delivery
        last = max(delivery.written, delivery.published)
        released = await self.store.restore_session(
            session_record(session, self.config.instance_id),
            last,
            self.config.session_linger * 2,
            delivery.order,
        )
        held = sum(len(k.held) for k in delivery.order.values())
        log.warning(
            "session.restored", session_id=session.session_id, last_seq=last, held_results=held,
            released_now=len(released),
        )  # fmt: skip
        if released:  # held results no longer behind an unfinished one
            delivery.deliver(released, released[-1][0])

    # ------------------------------------------------------------------ open / resume

    def _admit_new(self, peer: str) -> None:
        """A new session from ``peer``: within its address's budgets (sessions held, new
        sessions a second), or ``rate_limited``. Each lingers after its socket: without
        these an address could make the process hold sessions without end."""
        c = self.config
        if not peer:  # opened in-process, not from a socket (tests, embedding)
            return
        if self.per_peer[peer] >= c.max_sessions_per_ip:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"{self.per_peer[peer]} sessions are held for {peer} (limit {c.max_sessions_per_ip}); "
                "close one, or resume it instead of opening a new one",
            )
        now = self.clock()
        bucket = self._opens.get(peer)
        if bucket is None:
            if len(self._opens) >= 10_000:  # forget addresses that have not opened one for a while
                self._opens = {k: v for k, v in self._opens.items() if not v.full(now)}
            bucket = self._opens[peer] = TokenBucket(c.ip_sessions_per_s, c.ip_session_burst, stamp=now)
        if not bucket.take(1.0, now):
            wait = bucket.wait_for(1.0, now)
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"new sessions from {peer} come faster than {c.ip_sessions_per_s:g}/s; try again in {wait:.1f}s",
            )

    def set_peer(self, session: Session, peer: str) -> None:
        """The session's socket comes from ``peer`` now (opened, or resumed from elsewhere)."""
        self._drop_peer(session)
        session.peer = peer
        self.per_peer[peer] += 1

    def _drop_peer(self, session: Session) -> None:
        if session.peer:
            self.per_peer[session.peer] -= 1
            if self.per_peer[session.peer] <= 0:
                del self.per_peer[session.peer]
        session.peer = ""

    async def open(
        self,
        init: p.SessionInit,
        conn: Transport,
        peer: str = "",
        who: Speaker | None = None,
    ) -> Session:
        """A new session; ``who``: whom its access token admitted (with API keys)."""
        p.check_version(init.protocol_version)
        self._admit_new(peer)
        tgts = [init.tgt_lang] + [t for t in dict.fromkeys(init.extra_tgt_langs) if t != init.tgt_lang]
        if len(tgts) > self.config.max_targets:  # each target is a job per utterance
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"field `extra_tgt_langs`: at most {self.config.max_targets} target languages in all "
                f"(got {len(tgts)})",
            )
        for tgt in tgts:
            problem = pair_problem(init.src_lang, tgt)
            if problem:
                raise ProtocolError(ErrorCode.UNSUPPORTED_LANGUAGE_PAIR, problem)
        if init.room is not None:
            Rooms.check(init.room, init.room_key)
        for name, value in (("title", init.title), ("presenter", init.presenter)):
            if value is not None and (len(value) > 120 or not value.isprintable()):
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE, f"field `{name}`: at most 120 printable characters"
                )
        if init.sample_rate <= 0 or init.sample_rate > 192_000:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"sample_rate {init.sample_rate} is out of range")
        end_ms = None
        if init.end_of_speech == "server":
            end_ms = init.end_of_speech_ms or self.config.end_of_speech_ms
            if not 200 <= end_ms <= 5000:
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE, f"field `end_of_speech_ms`: {end_ms} is out of range (200-5000)"
                )
        settings = SessionSettings(
            src_lang=init.src_lang,
            tgt_langs=tgts,
            tts=init.tts,
            partials=init.partials,
            audio_format=init.audio_format,
            sample_rate=init.sample_rate,
            preferred_node_id=init.preferred_node_id,
            end_of_speech_ms=end_ms,
            room=init.room,
            room_key_hash=key_hash(init.room_key) if init.room is not None and init.room_key else None,
            identity=who.identity if who else None,
            key_id=who.key_id if who else None,
            langs_granted=sorted(who.langs) if who is not None and who.langs is not None else None,
            started_at=time.time(),
            title=(init.title or "").strip(),
            presenter=(init.presenter or "").strip(),
        )
        session = self._session(
            session_id=new_session_id(),
            trace_id=new_trace_id(),
            resume_token=new_token(),
            view_token=new_token(),
            settings=settings,
        )
        if who is not None:  # the key's concurrent sessions, across instances (before the room moves)
            session.key_secret = who.secret
            key_id, most = who.key_id, who.max_sessions
            if not await self.store.open_key_session(key_id, session.session_id, most, KEY_SESSION_LAPSE):
                self.metrics.inc("quota_refused", key=key_id)
                raise ProtocolError(
                    ErrorCode.QUOTA_EXCEEDED, f"key {key_id!r} has {most} sessions open (its max_sessions)"
                )
        if not await self._point_room(session):  # (a room commits to its key: another key's is refused above)
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "field `room`: this room belongs to another speaker")
        if who is not None:
            await self.store.add_usage(who.key_id, sessions=1)
            self.metrics.inc("key_usage", key=who.key_id, kind="sessions")
        await self.store.create_session(
            session_record(session, self.config.instance_id), self.config.session_linger * 2
        )
        self.sessions[session.session_id] = session
        self.set_peer(session, peer)
        session.delivery.start()
        session.delivery.conn = conn
        self.attached(session)
        self.metrics.inc("sessions_created")
        log.info(
            "session.created",
            trace_id=session.trace_id,
            session_id=session.session_id,
            src_lang=init.src_lang,
            tgt_lang=init.tgt_lang,
            extra_tgt_langs=tgts[1:],
            identity=settings.identity,
            key_id=settings.key_id,
        )
        self.events.started(session)
        return session

    async def resume(self, info: p.ResumeInfo, conn: Transport) -> tuple[Session, int]:
        session = self.sessions.get(SessionId(info.session_id))
        if (session is None or session.life.gone) and self.remote.shared:
            session = await self._take(SessionId(info.session_id), info.resume_token)
        if session is None or session.life.gone:
            raise ProtocolError(
                ErrorCode.SESSION_NOT_FOUND,
                f"session {info.session_id} does not exist or has expired",
            )
        if not same_token(session.resume_token, info.resume_token):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "resume_token does not match")
        delivery = session.delivery
        old = delivery.conn
        if old is not None:
            delivery.conn = None
            await close_quietly(old, 4000, "resumed elsewhere")
        try:
            replayed = await delivery.attach(conn, info.last_seq, lambda n: self.init_ack(session, n))
        except BaseException:
            self._unattached(session)
            raise
        if delivery.conn is not conn:  # the greeting could not be written: the socket is gone
            self._unattached(session)
        try:  # the room follows the speaker (here after a take-over, or the store lost it)
            await self._point_room(session)
        except DependencyDown:
            log.warning("session.room_not_claimed", session_id=session.session_id, trace_id=session.trace_id)
        self.metrics.inc("sessions_resumed")
        self.metrics.inc("events_replayed", replayed)
        log.info(
            "session.resumed",
            trace_id=session.trace_id,
            session_id=session.session_id,
            last_seq=info.last_seq,
            replayed=replayed,
        )
        return session, replayed

    async def _point_room(self, session: Session) -> bool:
        """Point the session's room (if it names one) at it; False when the room is another
        speaker's."""
        st = session.settings
        if st.room is None or st.room_key_hash is None:
            return True
        return await self.rooms.claim(st.room, st.room_key_hash, session.session_id, session.view_token)

    async def _take(self, session_id: SessionId, token: str) -> Session | None:
        """Resume here a session another instance held (it moved, or that instance died)."""
        rec = await self.store.load_session(session_id)
        if rec is None:
            return None
        if not same_token(rec.resume_token, token):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "resume_token does not match")
        prev = await self.store.claim_session(
            session_id, self.config.instance_id, self.config.session_linger * 2
        )
        session = self._session(
            session_id=session_id,
            trace_id=TraceId(rec.trace_id),
            resume_token=rec.resume_token,
            view_token=rec.view_token,
            settings=settings_from_record(rec),
        )
        session.utterances.max_index = rec.max_index
        self.sessions[session_id] = session
        session.delivery.start()
        await self.remote.session_claimed(session_id, prev)
        log.info("session.taken_over", session_id=session_id, trace_id=session.trace_id, from_instance=prev)
        return session

    def _unattached(self, session: Session) -> None:
        """A resume failed before its socket was attached: a session with no socket
        lingers (it would otherwise stay held here for ever)."""
        if session.delivery.conn is None and not session.life.lingering and not session.life.gone:
            self.detached(session)

    # ------------------------------------------------------------------ disconnect / close

    def connection_closed(self, session: Session, conn: Transport) -> None:
        """The socket is gone: unregister it at once (never "send" into a dead socket)."""
        session.delivery.detach(conn)

    async def _forget(self, session: Session, reason: str) -> None:
        """Forget the session: its running jobs are cancelled, its state deleted. It has
        ended (``reason``): a session of an API key leaves the key's count and tells the
        operator's backend what it used (``session_ended``)."""
        self.sessions.pop(session.session_id, None)
        self._drop_peer(session)
        self._apply(session, session.life.forgotten())
        if session.settings.key_id is not None:
            usage: dict[str, float] = {}
            try:
                await self.store.close_key_session(session.settings.key_id, session.session_id)
                if self.events.webhooks.enabled:
                    rec = await self.store.load_session(session.session_id)
                    usage = rec.usage if rec is not None else {}
            except DependencyDown:  # its count lapses by itself; its usage is in the key's totals
                log.warning("session.usage_unknown", session_id=session.session_id, trace_id=session.trace_id)
            self.events.ended(session, reason, usage)
        self.tasks.cancel(session.utterances.idle_timer)
        await self.cancel_jobs(list(session.life.running), "session_gone")
        await session.delivery.stop()
        await self.store.drop_session(session.session_id)

    async def close(self, session: Session) -> None:
        """``session_close``: finish running jobs, deliver their results, then close. A
        repeated ``session_close`` changes nothing (one ``session_closed``). With nothing
        running, the close is finished before this returns."""
        for cmd in session.life.close():
            if isinstance(cmd, Finish):
                await self._finish(session)
            else:
                self._apply(session, [cmd])

    def job_added(self, session: Session, job_id: JobId) -> None:
        """A job of the session was accepted (a close waits for it)."""
        session.life.job_added(job_id)

    def result_written(self, job_id: str) -> None:
        """A translation_result's socket write completed."""
        self.metrics.inc("results_delivered")
        self.metrics.result_written(job_id, self.clock())
        if self.tracing is not None:
            self.tracing.delivered(job_id)

    def result_entered(self, session: Session, job_id: str) -> None:
        """A result is on its way to the client: its job no longer keeps the session open
        (this is how a job handed over to another instance counts as done here)."""
        self._apply(session, session.life.job_done(JobId(job_id)))

    async def _finish(self, session: Session) -> None:
        delivery = session.delivery
        delivery.emit(p.SessionClosed(reason="client_closed"))
        await delivery.flush()
        conn = delivery.conn
        await self._forget(session, "client_closed")
        if conn is not None:
            await close_quietly(conn, 1000, "session closed")
        log.info("session.closed", trace_id=session.trace_id, session_id=session.session_id)

    async def ack_events(self, session: Session, seq: int) -> None:
        if seq > 0:
            await self.store.ack_events(session.session_id, seq)

    async def moved_away(self, session_id: SessionId, new_owner: str) -> int | None:
        """Another instance holds the session now: flush what we queued for it and forget
        it here (its jobs here carry on). Returns how far its history goes, or None when
        it was not held here."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return None
        self._drop_peer(session)
        log.info(
            "session.moved_away", session_id=session_id, trace_id=session.trace_id, to_instance=new_owner
        )
        delivery = session.delivery
        conn, delivery.conn = delivery.conn, None
        self._apply(session, session.life.moved_away())
        self.tasks.cancel(session.utterances.idle_timer)
        if conn is not None:
            await close_quietly(conn, 4004, "session moved to another instance")
        await delivery.flush()  # everything queued reaches the history: nothing is lost
        await delivery.stop()
        return int(await until_available(self.store.last_seq, session_id))

    async def stop(self) -> None:
        """Stop every session's delivery (the process stops; the sessions stay in the store
        for a resume elsewhere)."""
        for session in self.sessions.values():
            self.tasks.cancel(session.linger_timer)
            self.tasks.cancel(session.utterances.idle_timer)
        await asyncio.gather(*(s.delivery.stop() for s in list(self.sessions.values())))

    # ------------------------------------------------------------------ the outbox

    def emit(self, session_id: SessionId, msg: msgspec.Struct) -> None:
        """An event for a session held here (queued to its pump) or elsewhere (relayed)."""
        session = self.sessions.get(session_id)
        if session is not None:
            session.delivery.emit(msg)
            return
        relay = self.remote.relay(session_id)
        if relay is not None:
            relay.emit(msg)

    def emit_result(self, job: Job, result: p.TranslationResult, end: JobEnd, on_end: Any) -> bool:
        session = self.sessions.get(job.session_id)
        if session is not None:
            session.delivery.emit_result(job.tgt_lang, job.utterance_index, result, end, on_end)
            self._apply(session, session.life.job_done(job.job_id))
            return True
        relay = self.remote.relay(job.session_id)
        if relay is None:
            return False
        # the session is held by another instance (or by none right now): the result goes
        # into its history in order, and its holder is told
        log.info("result.sending", **job_fields(job), live=False, routed=True)
        relay.emit_result(job.tgt_lang, job.utterance_index, result, end, on_end)
        return True
