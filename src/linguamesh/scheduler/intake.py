"""Utterance intake: whole utterances and streamed ``audio_chunk``s become jobs.

Checks what the client sent (index order, duplicates, audio), records the
utterance and its jobs in one store step, and hands each job to the runner.
"""

from __future__ import annotations

import asyncio
import time

from .. import protocol as p
from ..audio import BadAudio, duration_seconds
from ..core.ids import NodeId, new_job_id
from ..core.jobs import Job
from ..core.stages import expand_stages
from ..observability.logging import get_logger
from ..protocol import ErrorCode, ProtocolError
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

    async def utterance(self, session: Session, msg: p.Utterance) -> None:
        fmt = msg.audio_format or session.settings.audio_format
        rate = msg.sample_rate or session.settings.sample_rate
        await self._new_utterance(session, msg.utterance_index, msg.audio, fmt, rate, msg.request_id)

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
        if msg.is_final or len(session.chunk_buf) >= max_bytes:
            await self._close_chunked(session, "final" if msg.is_final else "max_length")
        elif session.chunk_buf:
            session.chunk_timer = asyncio.get_running_loop().call_later(
                self.config.chunk_idle_gap,
                lambda: self.tasks.spawn(self._close_chunked(session, "idle_gap"), "chunk-close"),
            )

    async def _close_chunked(self, session: Session, why: str) -> None:
        session.chunk_timer = None
        audio = bytes(session.chunk_buf)
        session.chunk_buf.clear()
        if not audio:
            return
        index = session.max_index + 1
        log.info("utterance.closed", session_id=session.session_id, utterance_index=index, why=why)
        try:
            await self._new_utterance(session, index, audio, "pcm16", session.settings.sample_rate, None)
        except ProtocolError as exc:
            session.emit(p.Error(code=exc.code, message=exc.message, ref=f"utterance {index}"))
