"""Voice activity detection with WebRTC VAD: trims silence around the speech.

An utterance with no speech at all becomes empty, and the pipeline returns an
empty result for it instead of feeding silence to Whisper (which invents text).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..audio import FRAME_MS
from .base import Speech, VADEngine


class WebRtcVAD(VADEngine):
    name = "webrtc-vad"

    def __init__(self, cfg: dict[str, Any]) -> None:
        import webrtcvad

        self.aggressiveness = int(cfg.get("aggressiveness", 2))
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("webrtc-vad aggressiveness must be 0..3")
        self.padding_ms = int(cfg.get("padding_ms", 300))
        self.min_speech_ms = int(cfg.get("min_speech_ms", 90))
        self._vad = webrtcvad.Vad(self.aggressiveness)

    def _voiced(self, speech: Speech) -> list[bool]:
        rate = speech.sample_rate
        if rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtc-vad needs 8/16/32/48 kHz audio, got {rate}")
        frame = rate * FRAME_MS // 1000
        n = speech.samples.size // frame
        pcm = (np.clip(speech.samples[: n * frame], -1, 1) * 32767).astype("<i2").tobytes()
        return [self._vad.is_speech(pcm[i * frame * 2 : (i + 1) * frame * 2], rate) for i in range(n)]

    def _trim(self, speech: Speech) -> Speech:
        rate = speech.sample_rate
        voiced = self._voiced(speech)
        n = len(voiced)
        frame = rate * FRAME_MS // 1000
        if n == 0:
            return Speech(speech.samples[:0], rate)
        if sum(voiced) * FRAME_MS < self.min_speech_ms:
            return Speech(speech.samples[:0], rate)
        first = voiced.index(True)
        last = n - 1 - voiced[::-1].index(True)
        pad = self.padding_ms // FRAME_MS
        start = max(0, first - pad) * frame
        end = min(speech.samples.size, (last + 1 + pad) * frame)
        return Speech(speech.samples[start:end], rate)
