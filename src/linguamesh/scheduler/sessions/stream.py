"""The streamed utterance: a session's ``audio_chunk``s become utterances.

The decisions — when an utterance opens, grows, closes, where a long one is cut, what
waits for speech — are :class:`~linguamesh.core.segmenter.Segmenter`'s (one per session).
This module carries them out: a live utterance's jobs start at its first audio (through
the intake) and each later chunk is forwarded to the node of each job as it arrives
(``job_audio``); a buffered utterance becomes one whole utterance when it closes. Both
kinds close through :meth:`UtteranceStream._close`.

Instances on Redis: a live utterance's job may go to a streaming node another instance
holds. The job is handed over to that instance with the audio so far, and the rest is
relayed through its inbox as it arrives (``relay_audio``: byte offsets, so a piece that
comes twice or early is placed right); the node's end of speech comes back the same way
(``relayed_speech_end``). One extra Redis hop each way: live captions for every
session, whichever instance holds it (``docs/cluster.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ... import protocol as p
from ...audio import FRAME_MS, speech_onset, split_points, to_float32, voiced_frames
from ...core.ids import NodeId, SessionId
from ...core.jobs import Job, JobState
from ...core.segmenter import Append, ArmIdle, Close, Decision, DisarmIdle, Open, Segmenter
from ...observability.logging import get_logger
from ...protocol import ErrorCode, ProtocolError
from ...state.base import DependencyDown
from ..cluster.remote import Remote
from ..config import SchedulerConfig
from ..jobs.jobrun import JobRun
from ..nodes.registry import Registry
from ..records import job_fields
from ..tasks import Tasks
from .intake import Intake
from .session import Session

log = get_logger("linguamesh.scheduler")

#: Server-side end of speech: the audio kept before the start of speech.
PREROLL_SECONDS = 0.3
#: A live utterance whose audio falls this many seconds (plus the idle gap) behind the
#: wall clock is a trickle, not speech: it is closed, and the session's next utterances
#: for TRICKLE_PENALTY seconds are buffered (they hold no streaming slot while spoken).
#: An utterance is also closed after twice the utterance limit in wall-clock time.
TRICKLE_LAG = 2.0
TRICKLE_PENALTY = 30.0
#: A job in these states has its audio streamed to its node (the assign is written or on its way).
STREAMING_STATES = frozenset({JobState.ASSIGNED, JobState.DISPATCHED, JobState.ACCEPTED, JobState.RUNNING})


@dataclass(slots=True, eq=False)
class LiveUtterance:
    """An utterance still being spoken: its jobs (one per target language) started at its
    first audio and share this buffer. Each chunk is one piece; ``job_audio.seq`` numbers
    the pieces. ``number`` is the segmenter's."""

    number: int
    index: int
    pcm: bytearray
    pieces: int = 1
    #: when its first audio came (the stream's clock), and how long that audio was
    opened_at: float = 0.0
    opened_seconds: float = 0.0
    open: bool = True
    runs: list[JobRun] = field(default_factory=list)
    #: the instance that holds the session and relays the audio here (the job was handed over)
    relayed_from: str | None = None
    #: relayed pieces that came before the audio in front of them (byte offset -> audio)
    early: dict[int, bytes] = field(default_factory=dict)
    #: the relayed utterance's whole length, once its end was relayed
    final_size: int | None = None


class UtteranceStream:
    def __init__(
        self,
        config: SchedulerConfig,
        tasks: Tasks,
        intake: Intake,
        registry: Registry,
        kick: Callable[[], None],
        remote: Remote,
    ) -> None:
        self.config = config
        self.remote = remote
        self.tasks = tasks
        self.intake = intake
        self.registry = registry
        #: capacity may have appeared (the dispatcher's ``kick``)
        self.kick = kick
        #: this instance's event loop is behind (``budget.py``): chunks then arrive here
        #: late and in bursts, which is neither the speaker's trickle nor its pause
        self.behind: Callable[[], bool] = lambda: False

    # ------------------------------------------------------------------ events

    async def audio_chunk(self, session: Session, msg: p.AudioChunk) -> None:
        if session.settings.audio_format != "pcm16":
            raise ProtocolError(ErrorCode.BAD_AUDIO, "audio_chunk streaming needs audio_format pcm16")
        if msg.seq < 0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"field `seq`: {msg.seq} is negative")
        seg = self._segmenter(session)
        if seg.repeated(msg.seq):
            log.info("audio_chunk.duplicate", session_id=session.session_id, seq=msg.seq)
            return
        if len(msg.audio) % 2:
            raise ProtocolError(ErrorCode.BAD_AUDIO, "field `audio`: pcm16 chunk has an odd byte count")
        await self._cut_trickle(session, seg)
        now = self.intake.clock()
        utt = session.utterances
        await self._carry_out(
            session,
            seg.chunk(
                msg.seq, msg.audio, msg.is_final, lambda: now >= utt.no_live_until and self._can_stream()
            ),
        )

    async def _cut_trickle(self, session: Session, seg: Segmenter) -> None:
        """A live utterance holds a streaming slot while it is spoken: one whose audio comes
        far slower than speech (a few bytes now and then), or that stays open past twice
        the utterance limit, is closed as if its speaker paused. Not while this instance
        is behind: its own delay would look like the speaker's."""
        live = session.utterances.live
        if live is None or not live.open or self.behind():
            return
        now = self.intake.clock()
        elapsed = now - live.opened_at
        heard = len(live.pcm) / 2 / session.settings.sample_rate
        lag = elapsed - heard
        if (
            lag <= self.config.chunk_idle_gap + TRICKLE_LAG
            and elapsed <= 2 * self.config.max_utterance_seconds
        ):
            return
        log.warning(
            "utterance.trickle_cut", session_id=session.session_id, utterance_index=live.index,
            wall_seconds=round(elapsed, 3), audio_seconds=round(heard, 3), peer=session.peer,
        )  # fmt: skip
        session.utterances.no_live_until = now + TRICKLE_PENALTY
        await self._carry_out(session, seg.idle())

    async def speech_end(self, run: JobRun, size: int, reason: str = "pause") -> None:
        """The node proposes the end of the utterance ``size`` bytes into it (``reason``:
        ``pause``, ``sentence`` or ``length``)."""
        live = run.live
        if live is not None and live.relayed_from is not None:  # the session is held there
            if live.open:
                self.remote.speech_ended(live.relayed_from, run.job.session_id, run.job.job_id, size, reason)
            return
        session = self.intake.table.sessions.get(run.job.session_id)
        if session is None or live is None or not live.open or session.utterances.live is not live:
            return
        await self._speech_end(session, live.number, size, reason)

    async def relayed_speech_end(self, session_id: str, job_id: str, size: int, reason: str) -> None:
        """The node of a job relayed to another instance heard the speech end."""
        session = self.intake.table.sessions.get(SessionId(session_id))
        live = session.utterances.live if session is not None else None
        run = next((r for r in live.runs if r.job.job_id == job_id), None) if live is not None else None
        if session is not None and live is not None and run is not None and live.open:
            await self._speech_end(session, live.number, size, reason)

    async def _speech_end(self, session: Session, number: int, size: int, reason: str) -> None:
        why = "end_of_speech" if reason == "pause" else reason
        await self._carry_out(session, self._segmenter(session).speech_end(number, size, why))

    # ------------------------------------------------------------------ relayed audio (the node's instance)

    async def relay_audio(self, run: JobRun, offset: int, audio: bytes, size: int | None) -> None:
        """More of a relayed live utterance (``offset`` bytes into it; ``size``: its end):
        appended in order and forwarded to the job's node as a piece of its own."""
        live = run.live
        if live is None or live.relayed_from is None or not live.open:
            return
        if audio:
            live.early[offset] = audio
        if size is not None:
            live.final_size = size
        while True:
            have = len(live.pcm)
            at = min((o for o in live.early if o <= have), default=None)
            if at is None:
                break
            new = live.early.pop(at)[have - at :]
            if not new:
                continue
            live.pcm += new
            await self._forward(run, partial(_piece, seq=live.pieces, audio=new))
            live.pieces += 1
        end = live.final_size
        if end is None or len(live.pcm) < end:
            return
        del live.pcm[end:]
        live.open = False
        live.early.clear()
        job = run.job
        job.audio = bytes(live.pcm)
        job.audio_seconds = end / 2 / job.sample_rate
        await self._forward(
            run,
            lambda j: p.JobAudio(
                job_id=j.job_id, attempt_id=j.attempt_id, seq=live.pieces, is_final=True, size=end
            ),
        )
        self.kick()  # still waiting: it may go to any node now

    def _idle_timer(self, session: Session) -> None:
        """The idle timer fired: the gap is over (no chunk came since), or a chunk moved the
        deadline (the timer waits the rest), or nothing is open any more."""
        utt = session.utterances
        utt.idle_timer = None
        if utt.idle_due is None:
            return
        rest = utt.idle_due - self.intake.clock()
        if rest <= 0 and self.behind():  # the gap may be ours: chunks wait in the socket
            rest = self.config.chunk_idle_gap
        if rest > 0:
            utt.idle_timer = self.tasks.call_later(rest, lambda: self._idle_timer(session))
            return
        utt.idle_due = None
        self.tasks.spawn(self._idle(session), "chunk-close")

    async def _idle(self, session: Session) -> None:
        await self._carry_out(session, self._segmenter(session).idle())

    # ------------------------------------------------------------------ carrying out decisions

    def _segmenter(self, session: Session) -> Segmenter:
        seg = session.utterances.segmenter
        if seg is None:
            rate = session.settings.sample_rate

            def onset(pcm: bytes | bytearray) -> int | None:
                return speech_onset(pcm, rate, before=PREROLL_SECONDS)

            server_ends = session.settings.end_of_speech_ms is not None
            seg = session.utterances.segmenter = Segmenter(
                max_bytes=max(2, int(self.config.max_utterance_seconds * rate) * 2),
                cut=lambda pcm: self._cut(pcm, rate),
                onset=onset,
                server_ends=server_ends,
                preroll_bytes=2 * int((PREROLL_SECONDS + 0.1) * rate),
            )
        return seg

    async def _carry_out(self, session: Session, decisions: list[Decision]) -> None:
        """The segmenter's decisions, in order. An utterance the intake refused to open is
        dropped: what follows about it in the list is skipped."""
        utt = session.utterances
        refused: set[int] = set()
        for d in decisions:
            # the idle timer is moved lazily: every chunk disarms and re-arms it, and a
            # timer per chunk was a cost per chunk; the deadline moves, the timer stays
            if isinstance(d, DisarmIdle):
                utt.idle_due = None
            elif isinstance(d, ArmIdle):
                seg = utt.segmenter
                if seg is not None and seg.open:
                    utt.idle_due = self.intake.clock() + self.config.chunk_idle_gap
                    if utt.idle_timer is None:
                        utt.idle_timer = self.tasks.call_later(
                            self.config.chunk_idle_gap, lambda: self._idle_timer(session)
                        )
            elif d.number in refused:
                continue
            elif isinstance(d, Open):
                if not await self._open(session, d):
                    refused.add(d.number)
                    if utt.segmenter is not None:
                        utt.segmenter.refused(d.number)
            elif isinstance(d, Append):
                await self._append(session, d)
            else:
                await self._close(session, d)

    def _can_stream(self) -> bool:
        return self.config.streaming and bool(self.registry.streaming_anywhere())

    async def _open(self, session: Session, d: Open) -> bool:
        """The first audio of a live utterance: its jobs start now, with this much audio."""
        if session.life.gone:
            return False
        index = session.utterances.max_index + 1
        rate = session.settings.sample_rate
        seconds = len(d.audio) / 2 / rate
        # the session's live utterance before anything is awaited: a chunk that arrives
        # meanwhile (the next message on the socket, while the node's proposed cut opened
        # this one) is appended to it, and the jobs' assign carries it; and before its
        # jobs start: a node may answer at once
        live = LiveUtterance(
            d.number, index, bytearray(d.audio), opened_at=self.intake.clock(), opened_seconds=seconds
        )
        session.utterances.live = live
        try:
            if not await self.intake.admit(session, index):
                self._not_live(session, live)
                return False
            self.intake.limit(session, index, seconds)
            targets = await self.intake.utterance_targets(session)
            await self.intake.charge_key(session, index, seconds, targets)  # its API key's hour (--api-keys)
            if not await self.intake.accept(
                session, index, d.audio, "pcm16", rate, None, seconds, live, targets
            ):
                self._not_live(session, live)
                return False
        except ProtocolError as exc:  # this chunk is refused; the client is told which utterance
            self._not_live(session, live)
            session.delivery.emit(
                p.Error(code=exc.code, message=exc.message, ref=exc.ref or f"utterance {index}")
            )
            return False
        except DependencyDown as exc:
            self._not_live(session, live)
            self._dependency_down(session, index, exc)
            return False
        return True

    @staticmethod
    def _not_live(session: Session, live: LiveUtterance | None) -> None:
        """The utterance did not open: it is not the session's live one."""
        cur = session.utterances.live
        if cur is not None and (live is None or cur is live) and not cur.runs:
            session.utterances.live = None

    async def _append(self, session: Session, d: Append) -> None:
        live = session.utterances.live
        if live is None or live.number != d.number:
            return
        self.intake.charge(session, len(d.audio) / 2 / session.settings.sample_rate)
        live.pcm += d.audio
        live.pieces += 1
        for run in live.runs:
            if run.relayed_to is not None:  # its node's instance runs it: the audio goes there
                self.remote.stream_audio(
                    run.relayed_to, run.job.job_id, len(live.pcm) - len(d.audio), d.audio
                )
                run.relayed_len = len(live.pcm)
                continue
            await self._forward(
                run, lambda j: p.JobAudio(job_id=j.job_id, attempt_id=j.attempt_id, seq=d.seq, audio=d.audio)
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
        node_id = target[0]
        if await self.registry.send(node_id, make(job), job_id=job.job_id):
            return
        # the piece did not reach the node (the write failed or timed out): the node cannot
        # go on without it (it would transcribe speech with a hole), so the job fails over as
        # if that node were gone; the next attempt gets all the audio so far
        log.warning("job_audio.undelivered", **job_fields(job), to_node=node_id)
        run.streamed_to = None
        await self.intake.runner.node_lost(NodeId(node_id), [run])

    async def _close(self, session: Session, d: Close) -> None:
        """The utterance is complete: a live one's jobs get the rest of their audio and its
        end; a buffered one becomes one whole utterance. A split is told to the client."""
        live = session.utterances.live
        if d.live and (live is None or live.number != d.number):
            return  # refused when it opened
        index = live.index if d.live and live is not None else session.utterances.max_index + 1
        seconds = len(d.audio) / 2 / session.settings.sample_rate
        log.info(
            "utterance.closed",
            session_id=session.session_id,
            utterance_index=index,
            why=d.why,
            audio_seconds=round(seconds, 3),
            streaming=d.live,
        )
        if d.why == "split":  # the client learns why its speech became two utterances
            limit = self.config.max_utterance_seconds
            reason = f"split: speech longer than {limit:g}s is cut at a pause; the rest follows as utterance {index + 1}"
        if not d.live or live is None:
            if d.why == "split":
                for tgt in session.settings.tgt_langs:
                    session.delivery.emit(
                        p.JobStatus(utterance_index=index, tgt_lang=tgt, status="queued", reason=reason)
                    )
            await self._whole(session, index, d.audio)
            return
        audio = d.audio  # what the shell streamed, cut where the utterance ends
        first = live.opened_seconds
        del live.pcm[len(audio) :]
        live.open = False
        session.utterances.live = None
        for run in live.runs:
            job = run.job
            if run.relayed_to is not None:  # the end goes to the instance that runs it
                self.remote.stream_audio(run.relayed_to, job.job_id, len(audio), b"", size=len(audio))
                run.relayed_len = len(audio)
                continue
            if run.gone or job.state.terminal:
                continue
            job.audio = audio
            job.audio_seconds = seconds
            job.speech_ended_at = time.time()
            await self._forward(
                run,
                lambda j: p.JobAudio(
                    job_id=j.job_id, attempt_id=j.attempt_id, seq=live.pieces, is_final=True, size=len(audio)
                ),
            )
            if d.why == "split":
                status: p.JobStatusValue = "queued" if job.state is JobState.CREATED else "processing"
                session.delivery.emit(
                    p.JobStatus(utterance_index=index, tgt_lang=job.tgt_lang, status=status, reason=reason)
                )
        self.kick()  # a job still waiting may go to any node now
        try:  # the rest of its audio, streamed already: charged to its API key whatever its budget
            await self.intake.charge_key(session, index, max(0.0, seconds - first), None, debt=True)
        except DependencyDown:
            pass

    async def _whole(self, session: Session, index: int, audio: bytes) -> None:
        """A buffered utterance, closed: as if sent whole as utterance ``index``."""
        try:
            await self.intake.whole(session, index, audio, "pcm16", session.settings.sample_rate, None)
        except ProtocolError as exc:
            session.delivery.emit(p.Error(code=exc.code, message=exc.message, ref=f"utterance {index}"))
        except DependencyDown as exc:  # not accepted: the client is told which utterance (it may re-send)
            self._dependency_down(session, index, exc)

    def _dependency_down(self, session: Session, index: int, exc: DependencyDown) -> None:
        log.warning("session.dependency_down", session_id=session.session_id, utterance_index=index)
        message = f"shared state unavailable, try again: {exc}"
        session.delivery.emit(
            p.Error(code=ErrorCode.DEPENDENCY_DOWN.value, message=message, ref=f"utterance {index}")
        )

    def _cut(self, pcm: bytes, rate: int) -> int:
        """Where a streamed utterance longer than the limit is cut (bytes into ``pcm``): in a
        pause, never inside a word when there is a pause to cut at."""
        samples = to_float32(pcm, "pcm16", rate, rate)
        max_frames = int(self.config.max_utterance_seconds * 1000 / FRAME_MS)
        # as if speech went on past the buffer: the cut falls in the buffer's last pause
        cuts = split_points([*voiced_frames(samples, rate), True], max_frames)
        return cuts[0] * (rate * FRAME_MS // 1000) * 2 if cuts else len(pcm)


def _piece(job: Job, seq: int, audio: bytes) -> p.JobAudio:
    return p.JobAudio(job_id=job.job_id, attempt_id=job.attempt_id, seq=seq, audio=audio)
