from __future__ import annotations

import numpy as np
import pytest

from linguamesh.audio import BadAudio, duration_seconds, resample, to_float32, to_wav


def test_pcm16_and_wav_durations() -> None:
    assert duration_seconds(b"\0\0" * 8000, "pcm16", 16000) == 0.5
    wav = to_wav(np.zeros(22050, np.float32), 22050)
    assert duration_seconds(wav, "wav", 16000) == 1.0


def test_streamed_wav_with_bogus_length_uses_the_bytes_present() -> None:
    wav = bytearray(to_wav(np.zeros(8000, np.float32), 16000))
    wav[40:44] = (0x7FFFF000).to_bytes(4, "little")  # data chunk size as written by a stream
    assert duration_seconds(bytes(wav), "wav", 16000) == pytest.approx(0.5)
    assert to_float32(bytes(wav), "wav", 16000).size == 8000


@pytest.mark.parametrize(
    ("audio", "fmt", "msg"),
    [
        (b"", "pcm16", "empty"),
        (b"\0", "pcm16", "even"),
        (b"RIFFxx", "wav", "WAV"),
        (b"\0\0", "mp3", "unknown"),
    ],
)
def test_bad_audio(audio: bytes, fmt: str, msg: str) -> None:
    with pytest.raises(BadAudio, match=msg):
        duration_seconds(audio, fmt, 16000)


def test_resample_and_stereo_mixdown() -> None:
    x = np.sin(np.arange(44100, dtype=np.float32) / 10)
    assert resample(x, 44100, 16000).size == 16000
    stereo = to_wav(np.zeros(100, np.float32), 8000)
    assert to_float32(stereo, "wav", 8000, 16000).size == 200
