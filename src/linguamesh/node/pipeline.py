"""Run one job through the stages it asks for, timing each."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import protocol as p
from ..audio import FRAME_MS, BadAudio, split_points, to_float32, to_wav, voiced_frames
from ..engines.base import EngineError, Speech, VADEngine
from ..engines.registry import EngineSet
from ..observability.logging import get_logger
from ..observability.tracing import stage_span
from .shared_asr import SharedTranscripts, utterance_key

log = get_logger("linguamesh.node.pipeline")

PartialSink = Callable[[str, str], None]  # (stage, text)


@dataclass
class PipelineOutput:
    text_asr: str
    text_translated: str
    tts_audio: bytes | None
    tts_sample_rate: int | None
    timings: p.Timings


async def run_pipeline(
    engines: EngineSet,
    job: p.JobAssign,
    on_partial: PartialSink | None,
    log_fields: dict[str, object],
    shared: SharedTranscripts | None = None,
) -> PipelineOutput:
    """Run the job's stages; raises EngineError with a protocol error code on failure.
    With ``shared``, the utterance's sibling jobs (its other target languages) on this
    node share one transcript."""
    t0 = time.perf_counter()
    timings = p.Timings()
    try:
        samples = to_float32(job.audio, job.audio_format, job.sample_rate, 16000)
    except BadAudio as exc:
        raise EngineError(str(exc), "bad_audio", retryable=False) from None
    speech = Speech(samples, 16000)
    for vad in engines.vad:
        speech = await vad.trim(speech)
    if speech.samples.size == 0:
        # silence: an empty result, not an error (and no hallucinated text from the ASR)
        log.info("stage.skipped", reason="no speech", **log_fields)
        timings.total_ms = _ms(t0)
        return PipelineOutput("", "", None, None, timings)

    text = ""
    if "asr" in job.stages:
        asr = engines.asr_for(job.src_lang)
        if asr is None:
            raise EngineError(f"no ASR engine for {job.src_lang}", "unsupported_language_pair", False)
        t = time.perf_counter()
        drafts: list[str] = []
        parts_heard = [0]

        async def hear() -> str:
            done: list[str] = []  # the text of the parts before the one being decoded

            def sink(draft: str) -> None:
                whole = " ".join([*done, draft])
                drafts.append(whole)
                if on_partial is not None:
                    on_partial("asr", whole)

            parts = await split_speech(speech, engines.vad[0] if engines.vad else None)
            parts_heard[0] = len(parts)
            for part in parts:
                piece = (await asr.transcribe(part, job.src_lang, sink)).strip()
                if piece:
                    done.append(piece)
            return " ".join(done)

        from_sibling = False
        if shared is not None:
            key = utterance_key(job.session_id, job.utterance_index, job.src_lang, job.audio)
            text, from_sibling = await shared.transcribe(key, hear)
        else:
            text = await hear()
        timings.asr_ms = _ms(t)
        stage_span("asr", t, engine=asr.name, parts=parts_heard[0], shared=from_sibling)
        log.info(
            "stage.done",
            stage="asr",
            duration_ms=timings.asr_ms,
            engine=asr.name,
            parts=parts_heard[0],
            from_sibling=from_sibling,
            **log_fields,
        )
        if on_partial is not None and text and (not drafts or drafts[-1] != text):
            on_partial("asr", text)  # the draft, before repair/MT/TTS finish
    text_asr = text
    if "repair" in job.stages:
        rep = engines.repair_for(job.src_lang)
        if rep is not None and text:
            t = time.perf_counter()
            text = await rep.repair(text, job.src_lang)
            timings.repair_ms = _ms(t)
            stage_span("repair", t, engine=rep.name)
            text_asr = text
            log.info(
                "stage.done",
                stage="repair",
                duration_ms=timings.repair_ms,
                engine=rep.name,
                **log_fields,
            )
    translated = text
    if "nmt" in job.stages and text:
        mt = engines.mt_for(job.src_lang, job.tgt_lang)
        if mt is None:
            raise EngineError(
                f"no MT engine for {job.src_lang}->{job.tgt_lang}",
                "unsupported_language_pair",
                False,
            )
        t = time.perf_counter()
        translated = (await mt.translate(text, job.src_lang, job.tgt_lang)).strip()
        timings.nmt_ms = _ms(t)
        stage_span("nmt", t, engine=mt.name)
        log.info("stage.done", stage="nmt", duration_ms=timings.nmt_ms, engine=mt.name, **log_fields)
    audio: bytes | None = None
    rate: int | None = None
    if "tts" in job.stages and translated:
        tts = engines.tts_for(job.tgt_lang)
        if tts is None:
            raise EngineError(f"no TTS engine for {job.tgt_lang}", "unsupported_language_pair", False)
        t = time.perf_counter()
        out = await tts.synthesize(translated, job.tgt_lang)
        audio = to_wav(out.samples, out.sample_rate)
        rate = out.sample_rate
        timings.tts_ms = _ms(t)
        stage_span("tts", t, engine=tts.name)
        log.info("stage.done", stage="tts", duration_ms=timings.tts_ms, engine=tts.name, **log_fields)
    timings.total_ms = _ms(t0)
    return PipelineOutput(text_asr, translated, audio, rate, timings)


#: Speech longer than this is decoded in parts cut at pauses: Whisper decodes a 30 s
#: window at most and, given one long window, tends to stop at a pause and drop the rest
#: (a 30 s upload came back with 2 of its 9 sentences). A part never ends inside a word
#: when there is a pause to cut at (``audio.split_points``).
ASR_PART_SECONDS = 15.0


async def split_speech(speech: Speech, vad: VADEngine | None) -> list[Speech]:
    """``speech`` in parts of at most ASR_PART_SECONDS, cut in its pauses."""
    rate = speech.sample_rate
    if speech.samples.size <= ASR_PART_SECONDS * rate:
        return [speech]
    voiced = await vad.voiced(speech) if vad is not None else voiced_frames(speech.samples, rate)
    frame = rate * FRAME_MS // 1000
    cuts = split_points(voiced, int(ASR_PART_SECONDS * 1000 / FRAME_MS))
    edges = [0, *(c * frame for c in cuts), speech.samples.size]
    return [Speech(speech.samples[a:b], rate) for a, b in itertools.pairwise(edges) if b > a]


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 3)
