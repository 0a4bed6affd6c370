"""Utterance intake: whole utterances and streamed ``audio_chunk``s become jobs.

Checks what the client sent (index order, duplicates, audio), records the
utterance and its jobs in one store step, and hands each job to the runner.
"""

from __future__ import annotations

import asyncio
import time

from .. import protocol as p
from ..audio import FRAME_MS, BadAudio, duration_seconds, split_points, to_float32, voiced_frames
from ..core.ids import NodeId, new_job_id
from ..core.jobs import Job
from ..core.ratelimit import TokenBucket
from ..core.stages import expand_stages
from ..observability.logging import get_logger
from ..protocol import ErrorCode, ProtocolError
from ..state.base import DependencyDown
from .jobrun import JobRun
from .ports import Env
from .records import job_fields, job_record
from .runner import Runner
from .sessions import Session

log = get_logger("linguamesh.scheduler")


class Intake:
    def __init__(self, env: Env, runner: Runner) -> None:
        self.config, self.store, self.remote, self.metrics, self.tasks, self.clock = env
        self.runner = runner
        #: per client address: (utterances, audio seconds) token buckets
        self.by_ip: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    # ------------------------------------------------------------------ limits

    def _buckets(
        self, session: Session, now: float
    ) -> tuple[TokenBucket, TokenBucket, TokenBucket, TokenBucket]:
        c = self.config
        if session.buckets is None:
            session.buckets = (
                TokenBucket(c.session_utterances_per_s, c.session_utterance_burst, stamp=now),
                TokenBucket(c.session_audio_per_s, c.session_audio_burst, stamp=now),
            )
        ip = self.by_ip.get(session.peer)
        if ip is None:
            if len(self.by_ip) >= 10_000:  # forget addresses that have not sent for a while
                self.by_ip = {k: v for k, v in self.by_ip.items() if not (v[0].full(now) and v[1].full(now))}
            ip = self.by_ip[session.peer] = (
                TokenBucket(c.ip_utterances_per_s, c.ip_utterance_burst, stamp=now),
                TokenBucket(c.ip_audio_per_s, c.ip_audio_burst, stamp=now),
            )
        return session.buckets[0], session.buckets[1], ip[0], ip[1]

    def _limit(self, session: Session, index: int, seconds: float | None) -> None:
        """Take one utterance (or, with ``seconds``, that much audio) from the session's and
        the address's buckets; ``rate_limited`` when either is empty (nothing is taken)."""
        now = self.clock()
        s_utt, s_audio, ip_utt, ip_audio = self._buckets(session, now)
        if seconds is None:
            mine, address, amount, kind, what = s_utt, ip_utt, 1.0, "utterances", "utterances"
        else:
            mine, address, amount, kind, what = s_audio, ip_audio, seconds, "audio", "seconds of audio"
        for bucket, scope in ((mine, "session"), (address, "ip")):
            wait = bucket.wait_for(amount, now)
            if wait > 0:
                self.metrics.inc("rate_limited", scope=scope, kind=kind)
                session.refused += 1
                if now - session.refused_logged_at >= 1.0:  # one record a second for a flooding client
                    log.info("utterance.rate_limited", session_id=session.session_id, utterance_index=index,
                             scope=scope, kind=kind, peer=session.peer, refused=session.refused)  # fmt: skip
                    session.refused_logged_at = now
                    session.refused = 0
                retry = f"; try again in {wait:.1f}s" if wait != float("inf") else ""
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"this {scope} sends {what} faster than allowed ({bucket.rate:g}/s, burst {bucket.burst:g}){retry}",
                    ref=f"utterance {index}",
                )
        mine.take(amount, now)
        address.take(amount, now)

    async def utterance(self, session: Session, msg: p.Utterance) -> None:
        if msg.sample_rate is not None and not 0 < msg.sample_rate <= 192_000:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"field `sample_rate`: {msg.sample_rate} is out of range (1-192000)"
            )
        fmt = msg.audio_format or session.settings.audio_format
        rate = msg.sample_rate or session.settings.sample_rate
        try:
            await self._new_utterance(session, msg.utterance_index, msg.audio, fmt, rate, msg.request_id)
        except ProtocolError as exc:  # every refusal says which utterance it concerns
            exc.ref = exc.ref or f"utterance {msg.utterance_index}"
            raise

    async def _new_utterance(
        self,
        session: Session,
        index: int,
        audio: bytes,
        fmt: str,
        rate: int,
        request_id: str | None,
    ) -> None:
        if session.closing:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "session is closing; no new utterances")
        if index < 0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "utterance_index must not be negative")
        self._limit(session, index, None)
        if index <= session.max_index and await self.store.lookup_request(session.session_id, f"u:{index}"):
            log.info("utterance.duplicate", session_id=session.session_id, utterance_index=index)
            self.metrics.inc("utterances_duplicate")
            return
        if index < session.max_index:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"utterance_index {index} is below {session.max_index}: indices must increase",
            )
        try:
            seconds = duration_seconds(audio, fmt, rate)
        except BadAudio as exc:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"field `audio`: {exc}") from None
        if seconds > self.config.max_utterance_seconds:
            raise ProtocolError(
                ErrorCode.AUDIO_TOO_LARGE,
                f"utterance of {seconds:.1f}s exceeds {self.config.max_utterance_seconds:g}s",
            )
        self._limit(session, index, seconds)
        st = session.settings
        now = self.clock()
        preferred = NodeId(st.preferred_node_id) if st.preferred_node_id else None
        repair = self.store.nodes().repair_available(st.src_lang)
        jobs = [
            Job(
                job_id=new_job_id(),
                trace_id=session.trace_id,
                session_id=session.session_id,
                utterance_index=index,
                src_lang=st.src_lang,
                tgt_lang=tgt,
                stages=expand_stages(st.src_lang, tgt, tts=st.tts, repair_available=repair),
                audio=audio,
                audio_format=fmt,
                sample_rate=rate,
                audio_seconds=seconds,
                created_at=now,
                request_id=request_id,
                preferred_node_id=preferred,
            )
            for tgt in st.tgt_langs
        ]
        deadline = time.time() + self.config.pending_timeout
        me = self.config.instance_id
        records = [job_record(j, me, st.tts, st.partials, deadline, with_data=True) for j in jobs]
        refused = await self.store.accept_utterance(
            session.session_id, index, request_id, records, st.tgt_langs
        )
        if refused is not None:
            log.info(
                "utterance.duplicate",
                session_id=session.session_id,
                utterance_index=index,
                request_id=request_id,
                by=refused,
            )
            self.metrics.inc("utterances_duplicate")
            return
        session.max_index = max(session.max_index, index)
        log.info(
            "utterance.received",
            trace_id=session.trace_id,
            session_id=session.session_id,
            utterance_index=index,
            src_lang=st.src_lang,
            tgt_langs=st.tgt_langs,
            audio_size_bytes=len(audio),
            audio_seconds=round(seconds, 3),
        )
        self.metrics.inc("utterances_received")
        for job in jobs:
            session.active_jobs.add(job.job_id)
            session.job_ids.append(job.job_id)
            self.metrics.inc("jobs_created")
            log.info(
                "job.created",
                **job_fields(job),
                src_lang=job.src_lang,
                tgt_lang=job.tgt_lang,
                stages=list(job.stages),
                audio_format=fmt,
                audio_size_bytes=len(audio),
            )
            run = JobRun(job, st.tts, st.partials, first_tgt=job.tgt_lang == st.tgt_langs[0])
            await self.runner.created(run)

    # streaming ---------------------------------------------------------------

    async def audio_chunk(self, session: Session, msg: p.AudioChunk) -> None:
        if session.settings.audio_format != "pcm16":
            raise ProtocolError(ErrorCode.BAD_AUDIO, "audio_chunk streaming needs audio_format pcm16")
        if msg.seq < 0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"field `seq`: {msg.seq} is negative")
        if msg.seq <= session.chunk_seq:
            log.info("audio_chunk.duplicate", session_id=session.session_id, seq=msg.seq)
            return
        if len(msg.audio) % 2:
            raise ProtocolError(ErrorCode.BAD_AUDIO, "field `audio`: pcm16 chunk has an odd byte count")
        session.chunk_seq = msg.seq
        session.chunk_buf += msg.audio
        if session.chunk_timer is not None:
            session.chunk_timer.cancel()
            session.chunk_timer = None
        max_bytes = int(self.config.max_utterance_seconds * session.settings.sample_rate) * 2
        while len(session.chunk_buf) >= max_bytes:  # at the limit: cut in a pause
            await self._close_chunked(session, "split", self._part(session))
        if msg.is_final:
            await self._close_chunked(session, "final")
        elif session.chunk_buf:
            session.chunk_timer = asyncio.get_running_loop().call_later(
                self.config.chunk_idle_gap,
                lambda: self.tasks.spawn(self._close_chunked(session, "idle_gap"), "chunk-close"),
            )

    def _part(self, session: Session) -> bytes:
        """The first part of a streamed utterance longer than the limit, cut in a pause (never
        inside a word when there is a pause to cut at), taken out of the session's buffer."""
        rate = session.settings.sample_rate
        buf = session.chunk_buf
        samples = to_float32(bytes(buf), "pcm16", rate, rate)
        max_frames = int(self.config.max_utterance_seconds * 1000 / FRAME_MS)
        # as if speech went on past the buffer: the cut falls in the buffer's last pause
        cuts = split_points([*voiced_frames(samples, rate), True], max_frames)
        end = cuts[0] * (rate * FRAME_MS // 1000) * 2 if cuts else len(buf)
        part = bytes(buf[:end])
        del buf[:end]
        return part

    async def _close_chunked(self, session: Session, why: str, audio: bytes | None = None) -> None:
        """Close the streamed utterance (``audio``, or all that is buffered) as the next index."""
        if audio is None:
            session.chunk_timer = None
            audio = bytes(session.chunk_buf)
            session.chunk_buf.clear()
        if not audio:
            return
        index = session.max_index + 1
        log.info("utterance.closed", session_id=session.session_id, utterance_index=index, why=why)
        if why == "split":  # the client learns why its speech became two utterances
            limit = self.config.max_utterance_seconds
            for tgt in session.settings.tgt_langs:
                reason = f"split: speech longer than {limit:g}s is cut at a pause; the rest follows as utterance {index + 1}"
                session.emit(p.JobStatus(utterance_index=index, tgt_lang=tgt, status="queued", reason=reason))
        try:
            await self._new_utterance(session, index, audio, "pcm16", session.settings.sample_rate, None)
        except ProtocolError as exc:
            session.emit(p.Error(code=exc.code, message=exc.message, ref=f"utterance {index}"))
        except DependencyDown as exc:  # not accepted: the client is told which utterance (it may re-send)
            log.warning("session.dependency_down", session_id=session.session_id, utterance_index=index)
            message = f"shared state unavailable, try again: {exc}"
            session.emit(
                p.Error(code=ErrorCode.DEPENDENCY_DOWN.value, message=message, ref=f"utterance {index}")
            )
