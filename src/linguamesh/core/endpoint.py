"""Server-side end of speech: where an utterance streamed without end marks ends. Pure.

The node's VAD says, per 30 ms frame, whether it is speech. Once at least
``min_speech_ms`` of speech was heard, ``silence_ms`` of silence after it ends the
utterance. The cut goes in the middle of that silence, so both the ending utterance
and the next one keep some quiet around their words (never a cut inside a word).
"""

from __future__ import annotations


class EndOfSpeech:
    def __init__(self, silence_ms: int, frame_ms: int = 30, min_speech_ms: int = 150) -> None:
        if silence_ms < frame_ms:
            raise ValueError("silence_ms must be at least one frame")
        self.frame_ms = frame_ms
        self.silence_frames = max(1, silence_ms // frame_ms)
        self.min_speech_frames = max(1, min_speech_ms // frame_ms)
        self.frames = 0  # frames seen
        self._speech = 0  # voiced frames seen
        self._run = 0  # the voiced run going on (a blip shorter than 2 frames is not speech)
        self._last_voiced = -1  # index of the last frame of speech
        self.cut: int | None = None

    def feed(self, voiced: list[bool]) -> int | None:
        """Take the next frames' flags; the frame index to cut at once the speech ended
        (and from then on), else None."""
        for v in voiced:
            if self.cut is not None:
                break
            i = self.frames
            self.frames += 1
            if v:
                self._run += 1
                self._speech += 1
                if self._run >= 2 or self._last_voiced >= 0:
                    self._last_voiced = i
                continue
            self._run = 0
            if (
                self._speech >= self.min_speech_frames
                and self._last_voiced >= 0
                and i - self._last_voiced >= self.silence_frames
            ):
                self.cut = self._last_voiced + 1 + self.silence_frames // 2
        return self.cut

    def cut_seconds(self) -> float | None:
        return None if self.cut is None else self.cut * self.frame_ms / 1000
