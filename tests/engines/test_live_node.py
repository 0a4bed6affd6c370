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
    return p.JobAssign(
        job_id="j1", attempt_id=1, trace_id="t", session_id="s", utterance_index=0, src_lang="en",
        tgt_lang="es", audio=b"", audio_format="pcm16", sample_rate=16000, stages=["asr", "nmt"],
        deadline_ms=60_000, streaming=True, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


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
