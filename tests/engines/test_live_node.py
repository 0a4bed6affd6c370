"""The node's streaming job loop (node/live.py) driven directly: a proposed end of speech
waits for the scheduler's answer while audio keeps arriving."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from linguamesh import protocol as p
from linguamesh.audio import to_float32
from linguamesh.engines.models import ModelManager
from linguamesh.engines.registry import build
from linguamesh.node.live import LiveInput, run_streaming

from .conftest import espeak_wav


def _job(**kw: object) -> p.JobAssign:
    fields: dict[str, object] = dict(
        job_id="j1", attempt_id=1, trace_id="t", session_id="s", utterance_index=0, src_lang="en",
        tgt_lang="es", audio=b"", audio_format="pcm16", sample_rate=16000, stages=["asr", "nmt"],
        deadline_ms=60_000, streaming=True,
    )  # fmt: skip
    return p.JobAssign(**{**fields, **kw})  # type: ignore[arg-type]


@pytest.mark.timeout(30)
async def test_audio_after_a_proposed_end_waits_without_spinning_and_the_answer_decides() -> None:
    engines = build([{"kind": "webrtc-vad"}, {"kind": "test", "languages": ["en", "es"]}], ModelManager())
    speech = np.clip(to_float32(espeak_wav("Good morning to you all."), "wav", 0, 16000), -1, 1) * 32767
    audio = speech.astype("<i2").tobytes() + b"\0\0" * 16000  # then a second of silence
    job = _job(end_of_speech_ms=300)
    inp = LiveInput(job)
    proposed: list[int] = []
    task = asyncio.create_task(
        run_streaming(
            engines, job, inp, lambda *a: None, lambda size, _why: proposed.append(size), {"job_id": "j1"}
        )
    )
    seq = 0
    for at in range(0, len(audio), 640):  # 20 ms pieces, paced: the loop must leave time for us
        inp.add(p.JobAudio(job_id="j1", attempt_id=1, seq=seq, audio=audio[at : at + 640]))
        seq += 1
        await asyncio.sleep(0.005)
    assert proposed, "the node heard the end of speech"
    for _ in range(20):  # more audio after the proposal, before the scheduler answers
        inp.add(p.JobAudio(job_id="j1", attempt_id=1, seq=seq, audio=b"\0\0" * 320))
        seq += 1
        await asyncio.sleep(0.01)
    assert not task.done()  # still waiting for the answer
    inp.add(p.JobAudio(job_id="j1", attempt_id=1, seq=seq, is_final=True, size=proposed[0]))
    out = await asyncio.wait_for(task, 10)
    # the utterance is what the answer said: all the speech, nothing past the proposed end
    # (the test engine's text is the length of the audio its last decode heard)
    heard = float(out.text_asr.split()[-1])
    assert 0.9 <= heard <= proposed[0] / 32000, (out.text_asr, proposed)  # the words end ~1 s in
    assert out.text_translated == f"[es] {out.text_asr}"
    engines.close()


class _Stream:
    """One sibling job of a streamed utterance on a node sharing its hearing: its input,
    its drafts and its task."""

    def __init__(self, engines: object, shared: object, tgt: str, utterance: int = 0, **kw: object) -> None:
        self.job = _job(
            **{"job_id": f"j{utterance}-{tgt}", "tgt_lang": tgt, "utterance_index": utterance, **kw}
        )
        self.inp = LiveInput(self.job)
        self.drafts: list[tuple[str, str]] = []
        self.task = asyncio.create_task(
            run_streaming(
                engines,  # type: ignore[arg-type]
                self.job,
                self.inp,
                lambda stage, text, _stable: self.drafts.append((stage, text)),
                lambda *_: None,
                {"job_id": self.job.job_id},
                shared=shared,  # type: ignore[arg-type]
            )
        )
        self.seq = self.job.audio_seq

    def add(self, audio: bytes, final: bool = False) -> None:
        self.inp.add(
            p.JobAudio(job_id=self.job.job_id, attempt_id=1, seq=self.seq, audio=audio, is_final=final)
        )
        self.seq += 1


def _plain(text: str) -> str:
    """(the test engine's text, however the transcriber committed it)"""
    return text.lower().rstrip(".")


async def _speak(streams: list[_Stream], seconds: float, final: bool = True) -> None:
    """``seconds`` of audio to every stream, in 20 ms pieces, as the scheduler sends it."""
    for i in range(round(seconds / 0.02)):
        for s in streams:
            s.add(b"\1\0" * 320, final=final and i == round(seconds / 0.02) - 1)
        await asyncio.sleep(0.002)


@pytest.mark.timeout(30)
async def test_sibling_streams_hear_the_utterance_once_and_a_late_one_is_told_what_was_heard() -> None:
    from linguamesh.node.shared_asr import SharedTranscripts

    engines = build([{"kind": "test", "languages": ["en", "es", "fr", "de"]}], ModelManager())
    shared = SharedTranscripts()
    es, fr = _Stream(engines, shared, "es"), _Stream(engines, shared, "fr")
    await _speak([es, fr], 1.5, final=False)
    # assigned late: the audio so far comes with it
    late = _Stream(engines, shared, "de", audio=bytes(es.inp.pcm), audio_seq=es.seq)
    await _speak([es, fr, late], 0.5)
    outs = [await asyncio.wait_for(s.task, 10) for s in (es, fr, late)]
    text = outs[0].text_asr
    assert _plain(text) == "test utterance 2.00"  # every piece, once
    assert [o.text_asr for o in outs] == [text] * 3
    assert [o.text_translated for o in outs] == [f"[{t}] {text}" for t in ("es", "fr", "de")]
    assert (shared.runs, shared.shared) == (1, 2)
    assert outs[1].timings.asr_ms == 0 and outs[0].timings.asr_ms > 0
    # the followers' drafts are the hearing's, and each its own translation
    assert ("asr", text) in fr.drafts and ("asr", text) in late.drafts
    assert ("nmt", f"[de] {text}") in late.drafts
    # a finished hearing serves a sibling that comes after it, with the same audio
    after = _Stream(engines, shared, "es", job_id="j-again", audio=bytes(es.inp.pcm), audio_seq=es.seq)
    after.add(b"", final=True)
    assert (await asyncio.wait_for(after.task, 10)).text_asr == text
    assert (shared.runs, shared.shared) == (1, 3)
    engines.close()


@pytest.mark.timeout(30)
async def test_a_follower_hears_its_own_copy_when_the_hearing_is_cancelled_or_covered_other_audio() -> None:
    from linguamesh.node.shared_asr import SharedTranscripts

    engines = build([{"kind": "test", "languages": ["en", "es", "fr"]}], ModelManager())
    shared = SharedTranscripts()
    es, fr = _Stream(engines, shared, "es"), _Stream(engines, shared, "fr")
    await _speak([es, fr], 1.0, final=False)
    es.task.cancel()  # the leader's job is cancelled mid-utterance: fr does not fail for it
    await _speak([fr], 0.5)
    out = await asyncio.wait_for(fr.task, 10)
    assert _plain(out.text_asr) == "test utterance 1.50" and out.text_translated == f"[fr] {out.text_asr}"
    assert (shared.runs, shared.shared) == (2, 0)
    # another utterance: the follower's audio ends elsewhere than the hearing's (a bug
    # upstream): it hears its own copy rather than take a transcript of other audio
    a, b = _Stream(engines, shared, "es", 1), _Stream(engines, shared, "fr", 1)
    await _speak([a, b], 1.0, final=False)
    a.add(b"", final=True)
    await _speak([b], 0.3)
    outs = [await asyncio.wait_for(s.task, 10) for s in (a, b)]
    assert [_plain(o.text_asr) for o in outs] == ["test utterance 1.00", "test utterance 1.30"]
    assert (shared.runs, shared.shared) == (4, 0)
    # a job that watches for the end of speech does not follow a hearing that does not
    c = _Stream(engines, shared, "es", 2)
    d = _Stream(engines, shared, "fr", 2, end_of_speech_ms=300)
    await _speak([c, d], 0.5)
    await asyncio.gather(c.task, d.task)
    assert (shared.runs, shared.shared) == (6, 0)
    engines.close()
