"""Incremental ASR on the default Whisper model: words appear while the speech arrives,
and the final transcript is as good as decoding the whole utterance."""

from __future__ import annotations

import itertools

import numpy as np

from linguamesh.audio import to_float32
from linguamesh.engines.base import Speech
from linguamesh.engines.registry import EngineSet
from linguamesh.node.streaming import StreamingTranscriber
from linguamesh.quality import wer

from .conftest import espeak_wav

REF = "Good morning. I would like to buy two tickets to the museum, please. Is it open on Sunday?"


async def test_streamed_speech_gives_stable_words_before_it_ends(default_set: EngineSet) -> None:
    asr = default_set.asr_for("en")
    assert asr is not None
    speech = to_float32(espeak_wav(REF), "wav", 0, 16000)
    whole = await asr.transcribe(Speech(speech, 16000), "en")
    st = StreamingTranscriber(asr, "en")
    step = 12000  # 0.75 s of new audio per decode
    seen = []
    for at in range(0, speech.size, step):
        st.feed(speech[at : at + step])
        seen.append(await st.step())
    final = await st.finish()
    before_end = [h for h in seen[:-1] if h.stable > 0]
    assert before_end, [h.text for h in seen]  # committed words before the speech ended
    for a, b in itertools.pairwise(seen):  # committed text never changes
        assert b.text[: a.stable] == a.text[: a.stable]
    assert final.stable == len(final.text)
    assert wer(REF, final.text) <= wer(REF, whole) + 0.05, (final.text, whole)
    sentences = [s for h in [*seen, final] for s in h.sentences]
    assert len(sentences) >= 2 and sentences[0].lower().startswith("good morning")
    # the cost: every decode hears the buffer again (bounded by the trimming)
    assert st.decoded_seconds <= 12 * speech.size / 16000
    assert np.isclose(st.heard, speech.size / 16000)


async def test_the_next_sentence_starts_from_the_previous_one_s_audio_and_words(
    default_set: EngineSet,
) -> None:
    """What a sentence cut hands on (``tail``) and the next utterance starts from
    (``prefix``): the context is decoded with the new speech but neither shown nor
    reported again."""
    asr = default_set.asr_for("en")
    assert asr is not None
    one = to_float32(espeak_wav("The train to the airport leaves at nine."), "wav", 0, 16000)
    two = to_float32(espeak_wav("Please bring your passport and a warm coat."), "wav", 0, 16000)
    first = StreamingTranscriber(asr, "en")
    first.feed(one)
    await first.step()
    await first.step()
    await first.finish(decode=False)  # (a cut comes once the sentence is committed)
    cut = one.size / 16000
    audio, words = first.tail(cut, 5.0)
    assert audio.size == min(one.size, 5 * 16000)
    assert len(words) >= 5 and all(w.end <= 0.0 for w in words) and words[-1].text.endswith(".")
    nxt = StreamingTranscriber(asr, "en")
    nxt.prefix(audio, words)
    nxt.feed(two)
    await nxt.step()
    final = await nxt.finish()
    assert "nine" not in final.text.lower() and "airport" not in final.text.lower()
    assert wer("Please bring your passport and a warm coat.", final.text) <= 0.25, final.text
    assert [s for s in final.sentences] == [final.text]  # the context's sentence is not reported again
