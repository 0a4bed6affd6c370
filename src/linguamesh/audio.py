"""Audio helpers shared by scheduler, node and clients: length checks, pcm16/wav conversion."""

from __future__ import annotations

import io
import wave

import numpy as np


class BadAudio(ValueError):
    pass


def duration_seconds(audio: bytes, audio_format: str, sample_rate: int) -> float:
    """Length of an utterance in seconds; raises BadAudio when it cannot be read."""
    if not audio:
        raise BadAudio("audio is empty")
    if audio_format == "pcm16":
        if len(audio) % 2:
            raise BadAudio("pcm16 audio must have an even number of bytes")
        if sample_rate <= 0:
            raise BadAudio(f"sample_rate {sample_rate} is not positive")
        return float(len(audio) / 2 / sample_rate)
    if audio_format == "wav":
        try:
            with wave.open(io.BytesIO(audio)) as w:
                frames, rate = w.getnframes(), w.getframerate()
                frame_bytes = w.getnchannels() * w.getsampwidth()
        except (wave.Error, EOFError) as exc:
            raise BadAudio(f"not a readable WAV file: {exc}") from None
        if rate <= 0 or frame_bytes <= 0:
            raise BadAudio("WAV header has no sample rate or sample size")
        # a streamed WAV (e.g. `espeak-ng --stdout`) claims a huge length: trust the bytes
        data = audio.find(b"data")
        present = (len(audio) - data - 8) // frame_bytes if data >= 0 else frames
        return float(min(frames, present) / rate)
    raise BadAudio(f"unknown audio_format {audio_format!r}")


def to_float32(audio: bytes, audio_format: str, sample_rate: int, target_rate: int = 16000) -> np.ndarray:
    """Decode to mono float32 in [-1, 1] at ``target_rate``."""
    if audio_format == "pcm16":
        samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
        rate = sample_rate
    elif audio_format == "wav":
        import soundfile as sf

        try:
            data, rate = sf.read(io.BytesIO(audio), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError, RuntimeError, TypeError
            raise BadAudio(f"not a readable WAV file: {exc}") from None
        samples = data.mean(axis=1).astype(np.float32)
    else:
        raise BadAudio(f"unknown audio_format {audio_format!r}")
    return resample(samples, rate, target_rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    n = round(samples.size * target_rate / rate)
    x_old = np.linspace(0.0, 1.0, samples.size, endpoint=False)
    x_new = np.linspace(0.0, 1.0, n, endpoint=False)
    out: np.ndarray = np.interp(x_new, x_old, samples).astype(np.float32)
    return out


def to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(samples, -1.0, 1.0)
    return bytes((clipped * 32767.0).astype("<i2").tobytes())


def to_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(to_pcm16(samples))
    return buf.getvalue()


#: Frames of this length decide speech or silence for splitting.
FRAME_MS = 30


def frame_rms(samples: np.ndarray, rate: int, frame_ms: int = FRAME_MS) -> np.ndarray:
    """The RMS of each whole ``frame_ms`` frame of ``samples`` (full scale 1.0)."""
    frame = max(1, rate * frame_ms // 1000)
    n = samples.size // frame
    rms: np.ndarray = np.sqrt(
        np.mean(np.square(samples[: n * frame].reshape(n, frame).astype(np.float64)), axis=1)
    )
    return rms


def voiced_frames(samples: np.ndarray, rate: int, frame_ms: int = FRAME_MS) -> list[bool]:
    """Speech or not, per frame, by energy: a frame is voiced when its RMS is above a floor
    set from the loudest frames (robust to the recording level). For splitting long audio
    where no VAD engine is at hand (the scheduler); nodes use their VAD."""
    rms = frame_rms(samples, rate, frame_ms)
    if rms.size == 0:
        return []
    loud = float(np.percentile(rms, 95))
    floor = max(1e-3, loud * 0.1)
    return [bool(x > floor) for x in rms]


def speech_onset(
    pcm: bytes | bytearray, rate: int, *, level: float = 0.006, frames: int = 3, before: float = 0.3
) -> int | None:
    """Where speech starts in 16-bit pcm: the byte offset ``before`` seconds ahead of the
    first ``frames`` consecutive 30 ms frames louder than ``level`` (RMS, full scale 1.0;
    0.006 is -44 dBFS, below speech and above a quiet room), or None. Pure."""
    frame = max(1, rate * FRAME_MS // 1000)
    samples = np.frombuffer(bytes(pcm[: len(pcm) - len(pcm) % 2]), dtype="<i2").astype(np.float32) / 32768
    rms = frame_rms(samples, rate)
    if rms.size < frames:
        return None
    loud = rms > level
    run = 0
    for i, v in enumerate(loud):
        run = run + 1 if v else 0
        if run >= frames:
            first = i - frames + 1
            return max(0, first * frame - int(before * rate)) * 2
    return None


def split_points(voiced: list[bool], max_frames: int) -> list[int]:
    """Where to cut a run of frames into parts of at most ``max_frames`` each, never inside
    speech when it can be helped: each cut is the middle of the longest silence in the later
    half of its window (the latest of equally long ones); only a window that is speech all
    through its later half is cut at its end. The frame indices of the cuts, increasing. Pure."""
    if max_frames < 2:
        raise ValueError("max_frames must be at least 2")
    cuts: list[int] = []
    start = 0
    while len(voiced) - start > max_frames:
        lo, hi = start + max_frames // 2, start + max_frames
        best: tuple[int, int] | None = None  # (length, middle) of the longest silence
        i = lo
        while i < hi:
            if voiced[i]:
                i += 1
                continue
            j = i
            while j < hi and not voiced[j]:
                j += 1
            if best is None or j - i >= best[0]:
                best = (j - i, (i + j) // 2)
            i = j
        cut = hi if best is None else max(best[1], start + 1)
        cuts.append(cut)
        start = cut
    return cuts
