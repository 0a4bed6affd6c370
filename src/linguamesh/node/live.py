"""A streaming job on the node: the audio arrives while the person speaks.

``job_assign`` with ``streaming: true`` brings the audio so far; ``job_audio``
messages bring the rest, the last with ``is_final``. Meanwhile:

* the transcript is decoded again every ``STEP_SECONDS`` of new audio and the words
  two decodes agree on are committed (``StreamingTranscriber``); each decode sends a
  ``job_partial`` (stage ``asr``, with ``stable``: the committed characters);
* each committed sentence is repaired, translated and synthesized at once, in order,
  by a worker of its own, and the translation so far is sent as a ``job_partial``
  (stage ``nmt``); at the end only the last sentence is left to do;
* with ``end_of_speech_ms``, the node's VAD watches for the end of speech and, once
  heard, sends ``job_speech_end`` and finishes the job on the audio before the cut;
* when the speaker goes on without such a pause, the node proposes a cut after the
  last committed sentence with a gap after it (``core/sentences.py``; reason
  ``sentence``, or ``length`` past ``soft_max`` without one): results follow sentences.

The result has the shape of a whole-utterance job's result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import protocol as p
from ..audio import FRAME_MS, BadAudio, to_float32, to_wav
from ..core.agreement import Word
from ..core.endpoint import EndOfSpeech
from ..core.sentences import SentencePolicy, sentence_cut
from ..engines.base import EngineError, Speech
from ..engines.registry import EngineSet
from ..observability.logging import get_logger
from .pipeline import PipelineOutput
from .shared_asr import Ear, Hearing, SharedTranscripts, live_key
from .streaming import StreamingTranscriber

log = get_logger("linguamesh.node.live")

#: New audio (seconds) between two decodes of the growing buffer.
STEP_SECONDS = 0.5
#: Audio kept for re-decoding: older audio up to a committed sentence's end is dropped.
KEEP_SECONDS = 8.0
#: Decoding time allowed, as a share of the time spoken: a decode is skipped when the
#: decodes so far took more (the cost of streaming stays near 2x one whole decode, and a
#: node shared by several streams decodes each less often instead of falling behind).
DECODE_BUDGET = 0.4
#: Speech heard (frames) before the first decode.
MIN_SPEECH_FRAMES = 10
#: A pause this long after speech starts a decode at once (then that decode has heard
#: all the speech when the end comes, and the end needs no decode of its own).
SETTLE_FRAMES = 3
SETTLE_SECONDS = SETTLE_FRAMES * FRAME_MS / 1000
#: No audio for this long: the utterance is taken as ended (its scheduler went away).
STALL_SECONDS = 15.0
#: Silence between two synthesized sentences.
SENTENCE_GAP_SECONDS = 0.15
RATE = 16000

#: Where a streamed utterance is cut when the speaker does not pause (core/sentences.py).
SENTENCES = SentencePolicy()
#: Audio before a cut the next utterance of the session is decoded with (its context),
#: and how long it waits for that utterance.
CARRY_SECONDS = 5.0
CARRY_TTL_SECONDS = 30.0
#: Silent VAD frames that make a pause between sentences (90 ms).
PAUSE_FRAMES = 3

#: (stage, text, stable) -> sent as ``job_partial``
PartialSink = Callable[[str, str, "int | None"], None]
#: (size in bytes, reason) -> sent as ``job_speech_end``
SpeechEndSink = Callable[[int, str], None]


class LiveInput:
    """The audio of one streaming attempt, as it arrives, in order."""

    def __init__(self, job: p.JobAssign) -> None:
        if job.audio_format != "pcm16":
            raise EngineError("streaming needs pcm16 audio", "bad_audio", retryable=False)
        self.rate = job.sample_rate
        self.pcm = bytearray(job.audio)
        self.next_seq = job.audio_seq
        self.final = False
        #: the scheduler's stream had a hole (a bug): the attempt fails and is retried
        self.broken: str | None = None
        self.changed = asyncio.Event()
        self.last_heard = time.monotonic()

    def add(self, msg: p.JobAudio) -> str | None:
        """Take the next piece; what was wrong with it, or None."""
        if self.final:
            return "audio after the end of the utterance"
        if msg.seq < self.next_seq:
            return f"piece {msg.seq} again"
        if msg.seq > self.next_seq:
            self.broken = f"audio piece {self.next_seq} missing (got {msg.seq})"
            self.final = True
            self.changed.set()
            return self.broken
        self.pcm += msg.audio
        self.next_seq += 1
        self.last_heard = time.monotonic()
        if msg.is_final:
            self.final = True
            if msg.size is not None and 0 <= msg.size < len(self.pcm):
                del self.pcm[msg.size :]
        self.changed.set()
        return None


@dataclass
class Carry:
    """What a streaming job that cut its utterance after a sentence hands the session's
    next utterance on this node: the last seconds of audio before the cut and the words
    committed in them. A sentence decoded alone, with no speech before it, comes out
    worse than in the flow of a talk; with this the next utterance is decoded in context
    and starts after those words. Used only when the scheduler cut where proposed (the
    utterance's final size is the cut) and by the very next utterance; another node, a
    retry or a different cut starts without it."""

    utterance_index: int
    inp: LiveInput
    cut_bytes: int
    audio: np.ndarray
    words: list[Word]
    made: float = field(default_factory=time.monotonic)

    def fits(self, job: p.JobAssign) -> bool:
        return (
            job.utterance_index == self.utterance_index + 1
            and self.inp.final
            and len(self.inp.pcm) == self.cut_bytes
        )

    def stale(self, now: float) -> bool:
        """The next utterance starts at once after a sentence cut; one that has not come
        for this long will not use it (its memory goes: the audio and the utterance's)."""
        return now - self.made > CARRY_TTL_SECONDS


@dataclass
class _Sentence:
    source: str
    target: str = ""
    audio: np.ndarray | None = None
    audio_rate: int = 0


@dataclass
class _Totals:
    asr: float = 0.0
    repair: float = 0.0
    nmt: float = 0.0
    tts: float = 0.0
    done: list[_Sentence] = field(default_factory=list)


async def run_streaming(
    engines: EngineSet,
    job: p.JobAssign,
    inp: LiveInput,
    on_partial: PartialSink,
    on_speech_end: SpeechEndSink,
    log_fields: dict[str, object],
    carry: Carry | None = None,
    on_carry: Callable[[Carry], None] | None = None,
    shared: SharedTranscripts | None = None,
) -> PipelineOutput:
    """Run a streaming job to its result (see :class:`StreamingRun`)."""
    run = StreamingRun(engines, job, inp, on_partial, on_speech_end, log_fields, carry, on_carry, shared)
    return await run.run()


class StreamingRun:
    """One streaming job: hears the audio as it comes (``inp``), judges speech with the VAD,
    decodes now and then for live captions, proposes the end of speech (server-side end of
    speech), and once the utterance is final decodes what is left; committed sentences are
    repaired, translated and synthesized by a worker as they come.

    With ``shared``, the utterance is heard once on this node: a sibling run (another target
    language of the utterance) already hearing it is followed (its drafts and sentences), or
    this run hears it for the siblings that come (``shared_asr.py``)."""

    def __init__(
        self,
        engines: EngineSet,
        job: p.JobAssign,
        inp: LiveInput,
        on_partial: PartialSink,
        on_speech_end: SpeechEndSink,
        log_fields: dict[str, object],
        carry: Carry | None = None,
        on_carry: Callable[[Carry], None] | None = None,
        shared: SharedTranscripts | None = None,
    ) -> None:
        asr = engines.asr_for(job.src_lang)
        if asr is None:
            raise EngineError(f"no ASR engine for {job.src_lang}", "unsupported_language_pair", False)
        self.engines = engines
        self.job = job
        self.inp = inp
        self.on_partial = on_partial
        self.on_speech_end = on_speech_end
        self.log_fields = log_fields
        self.asr = asr
        self.vad = engines.vad[0] if engines.vad else None
        self.tr = StreamingTranscriber(asr, job.src_lang, RATE, keep_seconds=KEEP_SECONDS)
        self.on_carry = on_carry
        self.carried = carry is not None and carry.fits(job)
        if carry is not None and self.carried:
            self.tr.prefix(carry.audio, carry.words)
        self.end_detect = (
            EndOfSpeech(job.end_of_speech_ms) if job.end_of_speech_ms and self.vad is not None else None
        )
        self.totals = _Totals()
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self.fed = 0  # bytes of inp.pcm given to the transcriber
        self.judged = 0  # 30 ms frames judged by the VAD
        self.speech_end = 0.0  # seconds: the end of the last frame of speech (0: none yet)
        self.silent = 0  # frames of silence since then
        self.voiced = 0  # frames of speech in all
        #: the VAD's silences (first and last frame + 1): where a sentence may end
        self.pause_frames: list[tuple[int, int]] = []
        self.vad_rest = np.zeros(0, np.float32)  # samples after the last whole VAD frame
        self.stepped_at = 0.0  # seconds heard at the last decode
        self.step: asyncio.Task[None] | None = None
        self.last_text = ""
        #: the end of speech proposed to the scheduler (bytes), until it answers, and why
        self.cut_bytes: int | None = None
        self.cut_reason = ""
        self.shared = shared
        #: what this run hears, for its siblings (with ``shared``)
        self.hearing: Hearing | None = None

    async def run(self) -> PipelineOutput:
        t0 = time.perf_counter()
        job, shared = self.job, self.shared
        if shared is not None:
            key = live_key(job.session_id, job.utterance_index, job.src_lang)
            followed = shared.hearing(key, job.end_of_speech_ms)
            if followed is not None:
                out = await self._follow(followed, t0)
                if out is not None:
                    shared.shared += 1
                    return out
                self.totals, self.sentences = _Totals(), asyncio.Queue()  # hear it here
            self.hearing = shared.lead(key, job.end_of_speech_ms)
        try:
            return await self._hear_and_speak(t0)
        finally:
            if shared is not None and self.hearing is not None:
                shared.end(self.hearing, False)  # (no-op when it was heard to the end)

    async def _follow(self, hearing: Hearing, t0: float) -> PipelineOutput | None:
        """Translate and speak what a sibling run hears; None when it could not hear the
        utterance to the end, or heard other audio than this run got."""
        worker = asyncio.create_task(
            _sentence_worker(
                self.engines, self.job, self.sentences, self.totals, self.on_partial, self.log_fields
            )
        )
        ear = Ear(lambda text, stable: self.on_partial("asr", text, stable), self.sentences.put_nowait)
        hearing.join(ear)
        try:
            heard = await asyncio.shield(hearing.ended)
            own = await self._final()
            if not (heard and own and hearing.size == len(self.inp.pcm)):
                log.info("stream.follow_failed", heard=heard, **self.log_fields)
                return None
            hearing.leave(ear)
            self.sentences.put_nowait(None)
            await worker
        finally:
            hearing.leave(ear)
            worker.cancel()
        log.info(
            "stage.done",
            stage="asr",
            duration_ms=0.0,
            engine=self.asr.name,
            streaming=True,
            from_sibling=True,
            heard_seconds=round(len(self.inp.pcm) / 2 / self.inp.rate, 3),
            **self.log_fields,
        )
        return _output(self.job, self.totals, t0)

    async def _final(self) -> bool:
        """Wait for this run's own audio to end; False when it stalls or breaks."""
        inp = self.inp
        while not inp.final:
            inp.changed.clear()
            try:
                await asyncio.wait_for(inp.changed.wait(), STALL_SECONDS)
            except TimeoutError:
                return False
        return inp.broken is None

    def _drafted(self, text: str, stable: int | None) -> None:
        self.on_partial("asr", text, stable)
        if self.hearing is not None:
            self.hearing.drafted(text, stable)

    def _committed(self, sentence: str) -> None:
        self.sentences.put_nowait(sentence)
        if self.hearing is not None:
            self.hearing.committed(sentence)

    async def _hear_and_speak(self, t0: float) -> PipelineOutput:
        worker = asyncio.create_task(
            _sentence_worker(
                self.engines, self.job, self.sentences, self.totals, self.on_partial, self.log_fields
            )
        )
        try:
            await self._hear()
            final_decode = await self._finish()
            if self.shared is not None and self.hearing is not None:
                self.shared.end(self.hearing, True, len(self.inp.pcm) if self.inp.final else -1)
            await worker
        finally:
            worker.cancel()
            if self.step is not None:
                self.step.cancel()
        tr = self.tr
        log.info(
            "stage.done",
            stage="asr",
            duration_ms=round(self.totals.asr * 1000, 3),
            engine=self.asr.name,
            streaming=True,
            decodes=tr.decodes,
            decoded_seconds=round(tr.decoded_seconds, 3),
            heard_seconds=round(tr.heard, 3),
            final_decode=final_decode,
            carried_context=self.carried,
            **self.log_fields,
        )
        return _output(self.job, self.totals, t0)

    async def _hear(self) -> None:
        """Until the utterance is final (or the stream stalls): feed, judge, decode."""
        inp = self.inp
        while True:
            if self.fed < len(inp.pcm) and self.cut_bytes is None:
                await self._feed()
            if inp.final and self.cut_bytes is not None and len(inp.pcm) > self.cut_bytes:
                self.cut_bytes = None  # the utterance goes on past the cut: hear the rest
                continue
            if inp.final and (self.fed >= len(inp.pcm) or self.cut_bytes is not None):
                return  # (audio that came while the VAD ran is fed first)
            self._maybe_decode()
            inp.changed.clear()
            # more to hear (not past a proposed end: that waits for the scheduler's answer)
            if (self.fed < len(inp.pcm) and self.cut_bytes is None) or inp.final:
                continue
            if not await self._wait():
                log.warning("stream.stalled", heard_seconds=round(self.tr.heard, 3), **self.log_fields)
                return

    async def _feed(self) -> None:
        """The audio not yet heard, to the transcriber and the VAD."""
        inp = self.inp
        piece = bytes(inp.pcm[self.fed :])
        piece = piece[: len(piece) - len(piece) % 2]
        try:
            samples = to_float32(piece, "pcm16", inp.rate, RATE)
        except BadAudio as exc:
            raise EngineError(str(exc), "bad_audio", retryable=False) from None
        self.tr.feed(samples)
        self.fed += len(piece)
        if self.vad is not None:
            await self._judge(samples)

    async def _judge(self, samples: np.ndarray) -> None:
        """Speech or not, per 30 ms frame; proposes the end of speech once it is heard."""
        assert self.vad is not None
        frame = RATE * FRAME_MS // 1000
        audio = np.concatenate([self.vad_rest, samples])
        whole = audio.size - audio.size % frame
        self.vad_rest = audio[whole:]
        flags = await self.vad.voiced(Speech(audio[:whole], RATE)) if whole else []
        for v in flags:
            self.judged += 1
            if v:
                self.speech_end, self.silent = self.judged * FRAME_MS / 1000, 0
                self.voiced += 1
            else:
                self.silent += 1
                start = self.judged - self.silent
                if self.pause_frames and self.pause_frames[-1][0] == start:
                    self.pause_frames[-1] = (start, self.judged)  # the silence goes on
                elif self.silent >= PAUSE_FRAMES:
                    self.pause_frames.append((start, self.judged))
        if self.end_detect is not None and self.end_detect.feed(flags) is not None:
            # the scheduler decides: it answers with job_audio is_final and the size
            # (the cut, or more when the client had ended the utterance already)
            seconds = self.end_detect.cut_seconds() or 0.0
            self._propose(seconds, "pause")

    def _propose(self, seconds: float, reason: str) -> None:
        """Propose the end of the utterance at ``seconds``; hearing stops there until the
        scheduler answers (with ``job_audio`` ``is_final`` and the size it chose)."""
        self.end_detect = None
        self.cut_reason = reason
        self.cut_bytes = min(len(self.inp.pcm), int(seconds * self.inp.rate) * 2)
        log.info("stream.speech_end", at_seconds=round(seconds, 3), reason=reason, **self.log_fields)
        if self.on_carry is not None and reason in ("sentence", "length"):
            audio, words = self.tr.tail(self.cut_bytes / 2 / self.inp.rate, CARRY_SECONDS)
            self.on_carry(Carry(self.job.utterance_index, self.inp, self.cut_bytes, audio, words))
        self.on_speech_end(self.cut_bytes, reason)

    def _maybe_decode(self) -> None:
        """Start a decode (live captions) when one is due and none runs."""
        tr = self.tr
        # no decodes of silence or of a word's first syllable (Whisper invents text there)
        heard_speech = self.vad is None or self.voiced >= MIN_SPEECH_FRAMES
        # the speaker paused: decode now, so this decode has heard all the speech when the
        # end comes (the end then needs no decode of its own)
        settled = (
            self.speech_end > 0
            and self.silent >= SETTLE_FRAMES
            and self.stepped_at < self.speech_end + SETTLE_SECONDS
        )
        # decodes take at most DECODE_BUDGET of the time spoken (fewer when the cores are
        # shared by several streams); a decode at a pause is always worth it
        in_budget = self.totals.asr <= DECODE_BUDGET * tr.heard
        due = tr.heard - self.stepped_at >= STEP_SECONDS and in_budget
        if self.step is None and heard_speech and (due or settled):
            self.stepped_at = tr.heard
            self.step = asyncio.create_task(self._decode())

    async def _decode(self) -> None:
        t = time.perf_counter()
        hyp = await self.tr.step()
        self.totals.asr += time.perf_counter() - t
        if hyp.text != self.last_text:
            self.last_text = hyp.text
            self._drafted(hyp.text, hyp.stable)
        for s in hyp.sentences:
            self._committed(s)
        if self.cut_bytes is None and not self.inp.final:
            agreement = self.tr.agreement
            frame = FRAME_MS / 1000
            pauses = [(a * frame, b * frame) for a, b in self.pause_frames] if self.vad is not None else None
            cut = sentence_cut(
                self.tr.own_committed, agreement.tentative(), self.tr.covered, SENTENCES, pauses
            )
            if cut is not None:
                self._propose(cut.seconds, cut.reason)

    async def _wait(self) -> bool:
        """For more audio or the decode's end; False when neither came in STALL_SECONDS."""
        waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(self.inp.changed.wait())]
        if self.step is not None:
            waiters.append(self.step)  # type: ignore[arg-type]
        done, _ = await asyncio.wait(waiters, timeout=STALL_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        waiters[0].cancel()
        if self.step is not None and self.step.done():
            ended, self.step = self.step, None
            ended.result()  # a decode's error is the job's
        return bool(done)

    async def _finish(self) -> bool:
        """The last decode (unless the latest one heard all the speech) and the last
        sentences; True when a final decode ran."""
        inp, tr = self.inp, self.tr
        if inp.broken:
            raise EngineError(inp.broken, "internal", retryable=True)
        if self.step is not None:
            await self.step
        cut_bytes = self.cut_bytes
        if len(inp.pcm) < self.fed:  # the scheduler cut the utterance short
            cut_bytes = min(cut_bytes if cut_bytes is not None else self.fed, len(inp.pcm))
        # the latest decode heard all the speech (and nothing after the cut): it is the last
        limit = cut_bytes / 2 / inp.rate if cut_bytes is not None else float("inf")
        heard_all = (
            self.vad is not None and self.speech_end + SETTLE_SECONDS - 0.05 <= tr.covered <= limit + 0.05
        )
        if cut_bytes is not None:
            tr.truncate(cut_bytes / 2 / inp.rate)
        # a cut after a sentence (or at a word boundary) the scheduler took as proposed:
        # every word before it is committed already, and a decode of the audio up to it
        # would only hear the last word again in the short silence before the cut
        at_our_cut = self.cut_reason in ("sentence", "length") and len(inp.pcm) == self.cut_bytes
        t = time.perf_counter()
        final_decode = not heard_all and not at_our_cut and (self.vad is None or self.speech_end > 0)
        final = await tr.finish(decode=final_decode)
        self.totals.asr += time.perf_counter() - t
        if final.text != self.last_text:
            self._drafted(final.text, final.stable)
        for sentence in final.sentences:
            self._committed(sentence)
        self.sentences.put_nowait(None)
        return final_decode


async def _sentence_worker(
    engines: EngineSet,
    job: p.JobAssign,
    queue: asyncio.Queue[str | None],
    totals: _Totals,
    on_partial: PartialSink,
    log_fields: dict[str, object],
) -> None:
    """Repair, translate and synthesize committed sentences in order, as they come."""
    while (text := await queue.get()) is not None:
        s = _Sentence(text)
        if "repair" in job.stages and (rep := engines.repair_for(job.src_lang)) is not None:
            t = time.perf_counter()
            s.source = await rep.repair(text, job.src_lang)
            totals.repair += time.perf_counter() - t
        s.target = s.source
        if "nmt" in job.stages:
            mt = engines.mt_for(job.src_lang, job.tgt_lang)
            if mt is None:
                raise EngineError(
                    f"no MT engine for {job.src_lang}->{job.tgt_lang}", "unsupported_language_pair", False
                )
            t = time.perf_counter()
            s.target = (await mt.translate(s.source, job.src_lang, job.tgt_lang)).strip()
            totals.nmt += time.perf_counter() - t
        totals.done.append(s)
        if "nmt" in job.stages:
            on_partial("nmt", " ".join(x.target for x in totals.done if x.target), None)
        if "tts" in job.stages and s.target:
            tts = engines.tts_for(job.tgt_lang)
            if tts is None:
                raise EngineError(f"no TTS engine for {job.tgt_lang}", "unsupported_language_pair", False)
            t = time.perf_counter()
            out = await tts.synthesize(s.target, job.tgt_lang)
            s.audio, s.audio_rate = out.samples, out.sample_rate
            totals.tts += time.perf_counter() - t
        log.debug("stream.sentence", source=s.source, target=s.target, **log_fields)


def _output(job: p.JobAssign, totals: _Totals, t0: float) -> PipelineOutput:
    done = totals.done
    text_asr = " ".join(s.source for s in done if s.source)
    translated = " ".join(s.target for s in done if s.target)
    clips = [s for s in done if s.audio is not None and s.audio.size]
    audio: bytes | None = None
    rate: int | None = None
    if clips:
        rate = clips[0].audio_rate
        gap = np.zeros(int(SENTENCE_GAP_SECONDS * rate), np.float32)
        parts: list[np.ndarray] = []
        for c in clips:
            assert c.audio is not None
            if parts:
                parts.append(gap)
            parts.append(c.audio.astype(np.float32, copy=False))
        audio = to_wav(np.concatenate(parts), rate)
    timings = p.Timings(
        asr_ms=round(totals.asr * 1000, 3),
        repair_ms=round(totals.repair * 1000, 3),
        nmt_ms=round(totals.nmt * 1000, 3),
        tts_ms=round(totals.tts * 1000, 3),
        total_ms=round((time.perf_counter() - t0) * 1000, 3),
    )
    return PipelineOutput(text_asr, translated, audio, rate, timings)
