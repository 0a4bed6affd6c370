"""Utterance intake: whole utterances and streamed ``audio_chunk``s become jobs.

Checks what the client sent (index order, duplicates, audio), records the
utterance and its jobs in one store step, and hands each job to the runner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from ... import protocol as p
from ...audio import (
    FRAME_MS,
    BadAudio,
    duration_seconds,
    speech_onset,
    split_points,
    to_float32,
    voiced_frames,
)
from ...core.ids import NodeId, SessionId, new_job_id
from ...core.jobs import Job, JobState
from ...core.ratelimit import TokenBucket
from ...core.stages import expand_stages
from ...observability.logging import get_logger
from ...protocol import ErrorCode, ProtocolError
from ...state.base import DependencyDown
from ..cluster.remote import Env
from ..jobs.jobrun import JobRun, LiveAudio
from ..jobs.runner import Runner
from ..records import job_fields, job_record
from .delivery import Session

log = get_logger("linguamesh.scheduler")

#: Server-side end of speech: the audio kept before the start of speech.
PREROLL_SECONDS = 0.3
#: A job in these states has its audio streamed to its node (the assign is written or on its way).
STREAMING_STATES = frozenset({JobState.ASSIGNED, JobState.DISPATCHED, JobState.ACCEPTED, JobState.RUNNING})


class Intake:
    def __init__(self, env: Env, runner: Runner, sessions: Mapping[SessionId, Session]) -> None:
        self.config, self.store, self.remote, self.metrics, self.tasks, self.clock = env
        self.runner = runner
        self.sessions = sessions
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
        if not await self._admit(session, index):
            return
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
        await self._accept(session, index, audio, fmt, rate, request_id, seconds)

    async def _admit(self, session: Session, index: int) -> bool:
        """The checks of a new utterance index before its audio; False for a duplicate."""
        if session.closing:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "session is closing; no new utterances")
        if index < 0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "utterance_index must not be negative")
        self._limit(session, index, None)
        if index <= session.max_index and await self.store.lookup_request(session.session_id, f"u:{index}"):
            log.info("utterance.duplicate", session_id=session.session_id, utterance_index=index)
            self.metrics.inc("utterances_duplicate")
            return False
        if index < session.max_index:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"utterance_index {index} is below {session.max_index}: indices must increase",
            )
        return True

    async def _accept(
        self,
        session: Session,
        index: int,
        audio: bytes,
        fmt: str,
        rate: int,
        request_id: str | None,
        seconds: float,
        live: LiveAudio | None = None,
    ) -> bool:
        """Record the utterance and its jobs (one per target language) in one store step and
        start them. ``live``: the utterance is still being spoken (its jobs stream)."""
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
                # a job still being spoken: its deadlines allow for the longest utterance
                audio_seconds=self.config.max_utterance_seconds if live is not None else seconds,
                created_at=now,
                request_id=request_id,
                preferred_node_id=preferred,
                # a whole utterance was spoken before it arrived; a streamed one begins now
                spoken_at=time.time() - seconds,
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
            return False
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
            streaming=live is not None,
        )
        self.metrics.inc("utterances_received")
        runs = []
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
            first = job.tgt_lang == st.tgt_langs[0]
            run = JobRun(job, st.tts, st.partials, first_tgt=first)
            if live is not None:
                run.live = live
                run.end_of_speech_ms = st.end_of_speech_ms if first else None
                live.runs.append(run)
            runs.append(run)
        if live is not None:
            session.live = live
        for run in runs:
            await self.runner.created(run)
        return True

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
        if session.chunk_timer is not None:
            session.chunk_timer.cancel()
            session.chunk_timer = None
        if (
            session.live is not None
            or session.preroll
            or (not session.chunk_buf and msg.audio and self._can_stream())
        ):
            await self._live_chunk(session, msg.audio, msg.is_final)
            return
        session.chunk_buf += msg.audio
        max_bytes = int(self.config.max_utterance_seconds * session.settings.sample_rate) * 2
        while len(session.chunk_buf) >= max_bytes:  # at the limit: cut in a pause
            await self._close_chunked(session, "split", self._part(session.chunk_buf, session))
        if msg.is_final:
            await self._close_chunked(session, "final")
        elif session.chunk_buf:
            session.chunk_timer = asyncio.get_running_loop().call_later(
                self.config.chunk_idle_gap,
                lambda: self.tasks.spawn(self._close_chunked(session, "idle_gap"), "chunk-close"),
            )

    # streamed to a node as it arrives (issue 14; docs/protocol.md "Streaming jobs")

    def _can_stream(self) -> bool:
        return self.config.streaming and bool(self.runner.registry.streaming_nodes())

    async def _live_chunk(self, session: Session, audio: bytes, is_final: bool) -> None:
        live = session.live
        if live is None:
            if session.settings.end_of_speech_ms is not None:  # the server ends utterances
                speech = self._wait_for_speech(session, audio)
                if speech is None:
                    return
                audio = speech
            await self._open_live(session, audio)
        else:
            await self._append(session, live, audio)
        live = session.live
        if live is None:
            return
        if is_final:
            await self._close_live(session, live, "final")
            return
        max_bytes = int(self.config.max_utterance_seconds * session.settings.sample_rate) * 2
        while session.live is not None and len(session.live.pcm) >= max_bytes:  # cut in a pause
            live = session.live
            await self._close_live(session, live, "split", self._cut(live.pcm, session))
        self._arm_idle(session)

    def _wait_for_speech(self, session: Session, audio: bytes) -> bytes | None:
        """Server-side end of speech: the audio between two utterances waits here (the last
        0.3 s of it) until speech starts; then the speech, with that much before it, starts
        the next utterance. Silence alone makes no utterance (and no empty result)."""
        buf = session.preroll
        buf += audio
        rate = session.settings.sample_rate
        start = speech_onset(buf, rate, before=PREROLL_SECONDS)
        if start is None:
            keep = 2 * int((PREROLL_SECONDS + 0.1) * rate)
            if len(buf) > keep:
                del buf[: len(buf) - keep]
            return None
        speech = bytes(buf[start:])
        buf.clear()
        return speech

    def _arm_idle(self, session: Session) -> None:
        live = session.live
        if live is None:
            return
        if session.chunk_timer is not None:
            session.chunk_timer.cancel()
        session.chunk_timer = asyncio.get_running_loop().call_later(
            self.config.chunk_idle_gap,
            lambda: self.tasks.spawn(self._close_live(session, live, "idle_gap"), "chunk-close"),
        )

    async def _open_live(self, session: Session, audio: bytes) -> None:
        """The first audio of an utterance: its jobs start now, with this much audio."""
        index = session.max_index + 1
        rate = session.settings.sample_rate
        seconds = len(audio) / 2 / rate
        try:
            if not await self._admit(session, index):
                return
            self._limit(session, index, seconds)
            live = LiveAudio(index, bytearray(audio))
            await self._accept(session, index, audio, "pcm16", rate, None, seconds, live)
        except ProtocolError as exc:  # this chunk is refused; the client is told which utterance
            session.emit(p.Error(code=exc.code, message=exc.message, ref=exc.ref or f"utterance {index}"))
        except DependencyDown as exc:
            log.warning("session.dependency_down", session_id=session.session_id, utterance_index=index)
            message = f"shared state unavailable, try again: {exc}"
            session.emit(
                p.Error(code=ErrorCode.DEPENDENCY_DOWN.value, message=message, ref=f"utterance {index}")
            )

    async def _append(self, session: Session, live: LiveAudio, audio: bytes) -> None:
        if not audio:
            return
        now = self.clock()
        seconds = len(audio) / 2 / session.settings.sample_rate
        _, session_audio, _, ip_audio = self._buckets(session, now)
        for bucket in (session_audio, ip_audio):
            bucket.charge(seconds, now)  # accepted: a client streaming too fast waits at its next utterance
        seq = live.pieces
        live.pcm += audio
        live.pieces += 1
        for run in live.runs:
            await self._forward(
                run, lambda j: p.JobAudio(job_id=j.job_id, attempt_id=j.attempt_id, seq=seq, audio=audio)
            )

    async def _forward(self, run: JobRun, make: Callable[[Job], p.JobAudio]) -> None:
        """To the node of the job's current attempt, if its audio streams there."""
        job = run.job
        target = run.streamed_to
        if (
            target is None
            or run.gone
            or target != (job.node_id, job.attempt_id)
            or job.state not in STREAMING_STATES
        ):
            return
        await self.runner.registry.send(target[0], make(job), job_id=job.job_id)

    async def speech_end(self, run: JobRun, size: int) -> None:
        """The node heard the speech end ``size`` bytes into the utterance."""
        live = run.live
        session = self.sessions.get(run.job.session_id)
        if session is None or live is None or not live.open or session.live is not live:
            return
        await self._close_live(session, live, "end_of_speech", max(0, min(size, len(live.pcm))))

    async def _close_live(self, session: Session, live: LiveAudio, why: str, size: int | None = None) -> None:
        """The utterance is complete: its first ``size`` bytes (all, without ``size``). The
        audio after ``size`` starts the next utterance."""
        if not live.open:
            return
        rest = b""
        if size is not None and size < len(live.pcm):
            rest = bytes(live.pcm[size:])
            del live.pcm[size:]
        live.open = False
        if session.live is live:
            session.live = None
            if session.chunk_timer is not None:
                session.chunk_timer.cancel()
                session.chunk_timer = None
        audio = bytes(live.pcm)
        rate = session.settings.sample_rate
        seconds = len(audio) / 2 / rate
        log.info(
            "utterance.closed",
            session_id=session.session_id,
            utterance_index=live.index,
            why=why,
            audio_seconds=round(seconds, 3),
            streaming=True,
        )
        for run in live.runs:
            job = run.job
            if run.gone or job.state.terminal:
                continue
            job.audio = audio
            job.audio_seconds = seconds
            await self._forward(
                run,
                lambda j: p.JobAudio(
                    job_id=j.job_id, attempt_id=j.attempt_id, seq=live.pieces, is_final=True, size=len(audio)
                ),
            )
            if why == "split":
                limit = self.config.max_utterance_seconds
                reason = f"split: speech longer than {limit:g}s is cut at a pause; the rest follows as utterance {live.index + 1}"
                status: p.JobStatusValue = "queued" if job.state is JobState.CREATED else "processing"
                session.emit(
                    p.JobStatus(
                        utterance_index=live.index, tgt_lang=job.tgt_lang, status=status, reason=reason
                    )
                )
        self.runner.dispatcher.kick()  # a job still waiting may go to any node now
        if rest and not session.closed:  # the audio after the cut starts the next utterance
            await self._live_chunk(session, rest, False)

    def _cut(self, buf: bytearray, session: Session) -> int:
        """Where a streamed utterance longer than the limit is cut (bytes into ``buf``): in a
        pause, never inside a word when there is a pause to cut at."""
        rate = session.settings.sample_rate
        samples = to_float32(bytes(buf), "pcm16", rate, rate)
        max_frames = int(self.config.max_utterance_seconds * 1000 / FRAME_MS)
        # as if speech went on past the buffer: the cut falls in the buffer's last pause
        cuts = split_points([*voiced_frames(samples, rate), True], max_frames)
        return cuts[0] * (rate * FRAME_MS // 1000) * 2 if cuts else len(buf)

    def _part(self, buf: bytearray, session: Session) -> bytes:
        """The first part of ``buf`` up to the cut (``_cut``), taken out of it."""
        end = self._cut(buf, session)
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
