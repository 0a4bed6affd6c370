"""The session desk: client sessions held by this instance.

Opens, resumes (replaying what the client missed), takes over sessions another
instance held, keeps a disconnected session for ``session_linger``, closes
(after its running jobs delivered their results), and routes every event for a
session — here to its pump, elsewhere through the remote's relay. It implements
the :class:`~linguamesh.scheduler.ports.Outbox` port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from ... import protocol as p
from ...core.history import ReplayGap
from ...core.ids import JobId, SessionId, TraceId, new_session_id, new_token, new_trace_id
from ...core.jobs import Job
from ...core.languages import pair_problem
from ...observability import tracing
from ...observability.logging import get_logger
from ...protocol import ErrorCode, ProtocolError
from ...state.base import JobEnd
from ..cluster.remote import Env, JobControl
from ..records import job_fields, same_token, session_record, settings_from_record
from .delivery import Session, SessionSettings, Transport, close_quietly, until_available
from .rooms import Rooms

log = get_logger("linguamesh.scheduler")


class Desk:
    def __init__(self, env: Env, init_ack: Callable[[Session, int], bytes]) -> None:
        self.config, self.store, self.remote, self.metrics, self.tasks, self.clock = env
        self.init_ack = init_ack
        self.tracing = tracing.current("scheduler")
        self.sessions: dict[SessionId, Session] = {}
        #: viewer links that outlive a session
        self.rooms = Rooms()
        #: set by the service: cancels a dropped session's jobs
        self.jobs: JobControl | None = None

    def _session(self, **kw: Any) -> Session:
        session = Session(
            store=self.store,
            on_detached=self._detached,
            on_delivered=self._delivered,
            on_result=self._result_delivered,
            **kw,
        )

        async def heal() -> None:
            await self.restore(session)

        session.heal = heal
        session.max_backlog = self.config.max_client_backlog_bytes
        return session

    async def restore(self, session: Session) -> None:
        """Write a session held here back into a store that lost it, numbering included."""
        last = max(session.written, session.published)
        released = await self.store.restore_session(
            session_record(session, self.config.instance_id),
            last,
            self.config.session_linger * 2,
            session.order,
        )
        held = sum(len(k.held) for k in session.order.values())
        log.warning(
            "session.restored", session_id=session.session_id, last_seq=last, held_results=held,
            released_now=len(released),
        )  # fmt: skip
        if released:  # held results no longer behind an unfinished one
            session.deliver(released, released[-1][0])

    # ------------------------------------------------------------------ open / resume

    async def open(self, init: p.SessionInit, conn: Transport) -> Session:
        p.check_version(init.protocol_version)
        tgts = [init.tgt_lang] + [t for t in dict.fromkeys(init.extra_tgt_langs) if t != init.tgt_lang]
        for tgt in tgts:
            problem = pair_problem(init.src_lang, tgt)
            if problem:
                raise ProtocolError(ErrorCode.UNSUPPORTED_LANGUAGE_PAIR, problem)
        if init.room is not None:
            Rooms.check(init.room, init.room_key)
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
        )
        session = self._session(
            session_id=new_session_id(),
            trace_id=new_trace_id(),
            resume_token=new_token(),
            view_token=new_token(),
            settings=settings,
        )
        await self.store.create_session(
            session_record(session, self.config.instance_id), self.config.session_linger * 2
        )
        self.sessions[session.session_id] = session
        if init.room is not None and init.room_key is not None:
            self.rooms.claim(init.room, init.room_key, session.session_id, session.view_token)
        session.start()
        session.conn = conn
        self.metrics.inc("sessions_created")
        log.info(
            "session.created",
            trace_id=session.trace_id,
            session_id=session.session_id,
            src_lang=init.src_lang,
            tgt_lang=init.tgt_lang,
            extra_tgt_langs=tgts[1:],
        )
        return session

    async def resume(self, info: p.ResumeInfo, conn: Transport) -> tuple[Session, int]:
        session = self.sessions.get(SessionId(info.session_id))
        if (session is None or session.closed) and self.remote.shared:
            session = await self._take(SessionId(info.session_id), info.resume_token)
        if session is None or session.closed:
            raise ProtocolError(
                ErrorCode.SESSION_NOT_FOUND,
                f"session {info.session_id} does not exist or has expired",
            )
        if not same_token(session.resume_token, info.resume_token):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "resume_token does not match")
        old = session.conn
        if old is not None:
            session.conn = None
            await close_quietly(old, 4000, "resumed elsewhere")
        try:
            replayed = await session.attach(conn, info.last_seq, lambda n: self.init_ack(session, n))
        except ReplayGap as exc:
            raise ProtocolError(ErrorCode.SESSION_NOT_FOUND, f"cannot resume: {exc}") from None
        if session.linger_timer is not None:
            session.linger_timer.cancel()
            session.linger_timer = None
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
            max_index=rec.max_index,
        )
        self.sessions[session_id] = session
        session.start()
        await self.remote.session_claimed(session_id, prev)
        log.info("session.taken_over", session_id=session_id, trace_id=session.trace_id, from_instance=prev)
        return session

    # ------------------------------------------------------------------ disconnect / linger / close

    def connection_closed(self, session: Session, conn: Transport) -> None:
        """The socket is gone: unregister it at once (seed 002)."""
        session.detach(conn)

    def _detached(self, session: Session) -> None:
        log.info("session.detached", trace_id=session.trace_id, session_id=session.session_id)
        if session.linger_timer is None and not session.closed:
            loop = asyncio.get_running_loop()
            session.linger_timer = loop.call_later(self.config.session_linger, self._linger_expired, session)

    def _linger_expired(self, session: Session) -> None:
        session.linger_timer = None
        if session.conn is None:
            log.info("session.expired", trace_id=session.trace_id, session_id=session.session_id)
            self.tasks.spawn(self.drop(session), f"drop-{session.session_id}")

    async def drop(self, session: Session) -> None:
        """Forget the session: its running jobs are cancelled, its state deleted."""
        session.closed = True
        self.sessions.pop(session.session_id, None)
        if session.chunk_timer is not None:
            session.chunk_timer.cancel()
        if self.jobs is not None:
            await self.jobs.cancel(session.active_jobs, "session_gone")
        await session.stop()
        await self.store.drop_session(session.session_id)

    async def close(self, session: Session) -> None:
        """``session_close``: finish running jobs, deliver their results, then close. A
        repeated ``session_close`` changes nothing (one ``session_closed``)."""
        if session.closing:
            return
        session.closing = True
        await self._maybe_finish_close(session)

    def _delivered(self, job_id: str) -> None:
        """A translation_result's socket write completed."""
        self.metrics.inc("results_delivered")
        self.metrics.result_written(job_id, self.clock())
        if self.tracing is not None:
            self.tracing.delivered(job_id)

    def _result_delivered(self, session: Session, job_id: str) -> None:
        """A result is on its way to the client: its job no longer keeps the session open
        (this is how a job handed over to another instance counts as done here)."""
        if JobId(job_id) in session.active_jobs:
            self._job_done(session, JobId(job_id))

    def _job_done(self, session: Session, job_id: JobId) -> None:
        session.active_jobs.discard(job_id)
        if session.closing and not session.active_jobs:
            self.tasks.spawn(self._maybe_finish_close(session), "finish-close")

    async def _maybe_finish_close(self, session: Session) -> None:
        if not session.closing or session.active_jobs or session.closed or session.finishing:
            return
        session.finishing = True  # once: the last job's end and a close may both get here
        session.emit(p.SessionClosed(reason="client_closed"))
        await session.drain()
        conn = session.conn
        await self.drop(session)
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
        log.info(
            "session.moved_away", session_id=session_id, trace_id=session.trace_id, to_instance=new_owner
        )
        conn, session.conn = session.conn, None
        if session.linger_timer is not None:
            session.linger_timer.cancel()
        if conn is not None:
            await close_quietly(conn, 4004, "session moved to another instance")
        await session.drain()  # everything queued reaches the history: nothing is lost
        session.closed = True
        await session.stop()
        return int(await until_available(self.store.last_seq, session_id))

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in list(self.sessions.values())))

    # ------------------------------------------------------------------ the outbox

    def emit(self, session_id: SessionId, msg: msgspec.Struct) -> None:
        """An event for a session held here (queued to its pump) or elsewhere (relayed)."""
        session = self.sessions.get(session_id)
        if session is not None:
            session.emit(msg)
            return
        relay = self.remote.relay(session_id)
        if relay is not None:
            relay.emit(msg)

    def emit_result(self, job: Job, result: p.TranslationResult, end: JobEnd, on_end: Any) -> bool:
        session = self.sessions.get(job.session_id)
        if session is not None:
            session.emit_result(job.tgt_lang, job.utterance_index, result, end, on_end)
            self._job_done(session, job.job_id)
            return True
        relay = self.remote.relay(job.session_id)
        if relay is None:
            return False
        # the session is held by another instance (or by none right now): the result goes
        # into its history in order, and its holder is told
        log.info("result.sending", **job_fields(job), live=False, routed=True)
        relay.emit_result(job.tgt_lang, job.utterance_index, result, end, on_end)
        return True
