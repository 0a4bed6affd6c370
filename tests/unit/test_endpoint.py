"""Server-side end of speech (core/endpoint.py): pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linguamesh.core.endpoint import EndOfSpeech


def frames(pattern: str) -> list[bool]:
    return [c == "#" for c in pattern]


def test_silence_after_speech_ends_it_in_the_middle_of_the_silence() -> None:
    e = EndOfSpeech(silence_ms=300, frame_ms=30, min_speech_ms=90)  # 10 frames of silence
    assert e.feed(frames("....######")) is None
    assert e.feed(frames("." * 9)) is None  # not yet 10 frames of silence
    cut = e.feed(frames("."))
    assert cut == 10 + 5  # speech ends at frame 10; half the silence stays with it
    assert e.feed(frames("####")) == cut  # decided once
    assert e.cut_seconds() == pytest.approx(0.45)


def test_a_pause_shorter_than_the_silence_does_not_end_it() -> None:
    e = EndOfSpeech(silence_ms=300, frame_ms=30, min_speech_ms=90)
    assert e.feed(frames("#####" + "." * 9 + "#####" + "." * 9)) is None


def test_no_speech_or_a_click_never_ends_anything() -> None:
    e = EndOfSpeech(silence_ms=300, frame_ms=30, min_speech_ms=150)
    assert e.feed(frames("." * 50 + "#" + "." * 50 + "##" + "." * 50)) is None


def test_the_silence_must_be_at_least_a_frame() -> None:
    with pytest.raises(ValueError):
        EndOfSpeech(silence_ms=10, frame_ms=30)


@given(st.lists(st.booleans(), max_size=300), st.integers(1, 300))
def test_feeding_in_pieces_decides_as_feeding_at_once(flags: list[bool], split: int) -> None:
    whole = EndOfSpeech(300).feed(flags)
    parts = EndOfSpeech(300)
    parts.feed(flags[:split])
    assert parts.feed(flags[split:]) == whole
    if whole is not None:  # the cut is inside the silence that ended the speech
        assert not any(flags[whole : whole + 1]) and whole <= len(flags)


def test_speech_onset_finds_loud_frames_and_keeps_a_little_before() -> None:
    import numpy as np

    from linguamesh.audio import speech_onset

    rate = 16000
    quiet = np.zeros(rate, np.int16)  # 1 s of silence
    tone = (0.1 * 32767 * np.sin(np.arange(rate // 2) * 0.2)).astype(np.int16)
    click = np.full(480, 8000, np.int16)  # one loud 30 ms frame: not speech
    assert speech_onset(quiet.tobytes(), rate) is None
    assert speech_onset(np.concatenate([quiet, click, quiet]).tobytes(), rate) is None
    start = speech_onset(np.concatenate([quiet, tone]).tobytes(), rate, before=0.3)
    assert start is not None and abs(start // 2 - int(0.7 * rate)) <= 480  # within a frame
    assert speech_onset(np.concatenate([tone, quiet]).tobytes(), rate) == 0
