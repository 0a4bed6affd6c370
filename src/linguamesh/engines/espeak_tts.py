"""Formant TTS with eSpeak NG for every language it has a voice for.

Runs the ``espeak-ng`` program (Debian package ``espeak-ng``) per utterance;
the WAV it writes to stdout is decoded in memory. Used for the languages no
neural voice covers.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from typing import Any

import numpy as np

from .base import EngineError, Speech, TTSEngine
from .models import ModelLoadError, ModelManager


def espeak_languages(binary: str) -> dict[str, str]:
    """ISO 639-1 code -> espeak voice name, for the voices installed."""
    out = subprocess.run([binary, "--voices"], capture_output=True, text=True, timeout=10, check=True).stdout
    voices: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4:
            continue
        code = cols[1]  # e.g. en-us, es, cmn, pt-br
        base = code.split("-")[0]
        if base == "cmn":
            base = "zh"
        if len(base) == 2 and base not in voices:
            voices[base] = code
    return voices


class EspeakTTS(TTSEngine):
    def __init__(self, cfg: dict[str, Any], models: ModelManager) -> None:
        binary = shutil.which(str(cfg.get("binary", "espeak-ng")))
        if binary is None:
            raise ModelLoadError("espeak-ng is not installed (apt-get install espeak-ng)")
        self.binary = binary
        self.voices = espeak_languages(binary)
        wanted = cfg.get("languages")
        if wanted:
            missing = [x for x in wanted if x not in self.voices]
            if missing:
                raise ModelLoadError(f"espeak-ng has no voice for {missing}")
            self.voices = {x: self.voices[x] for x in wanted}
        for lang in cfg.get("exclude", []):
            self.voices.pop(lang, None)
        self.rate = int(cfg.get("words_per_minute", 160))
        self.models = models
        self.name = "espeak-ng"

    def languages(self) -> frozenset[str]:
        return frozenset(self.voices)

    def _synthesize(self, text: str, lang: str, stop: threading.Event) -> Speech:
        import soundfile as sf

        voice = self.voices.get(lang)
        if voice is None:
            raise EngineError(f"espeak-ng has no voice for {lang}", "unsupported_language_pair", False)
        key = f"espeak-ng:{voice}"
        with self.models.inference(key):
            proc = subprocess.run(
                [self.binary, "-v", voice, "-s", str(self.rate), "--stdout", text],
                capture_output=True,
                timeout=60,
            )
        if proc.returncode != 0 or not proc.stdout:
            raise EngineError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
        data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        return Speech(np.asarray(data, dtype=np.float32), int(rate))
