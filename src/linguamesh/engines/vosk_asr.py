"""ASR with Vosk (Kaldi) model directories, e.g. ``vosk-model-small-en-us-0.15``.

The model directory's language is given in the engine config (Vosk model
directories do not record it reliably). Apache-2.0 code; model licences vary
by model (most small models are Apache-2.0).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .base import ASREngine, Cancelled, EngineError, PartialCallback, Speech
from .bundled import resolve
from .models import ModelLoadError, ModelManager, path_size

CHUNK_SECONDS = 0.5


def check_vosk_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory (expected a Vosk model)")
    if not (path / "am" / "final.mdl").is_file() and not (path / "final.mdl").is_file():
        raise ModelLoadError(f"{path} has no am/final.mdl: not a Vosk model directory")
    if not (path / "conf").is_dir() and not (path / "mfcc.conf").is_file():
        raise ModelLoadError(f"{path} has no conf/: not a Vosk model directory")


class VoskASR(ASREngine):
    def __init__(self, cfg: dict[str, Any], models: ModelManager) -> None:
        if "model" not in cfg or "language" not in cfg:
            raise ModelLoadError('vosk needs `model = "/path/to/model-dir"` and `language = "en"`')
        self.path = resolve(str(cfg["model"]))
        check_vosk_dir(self.path)
        self.lang = str(cfg["language"])
        self.models = models
        self.name = f"vosk:{self.path.name}"
        self.key = f"vosk:{self.path}"

    def languages(self) -> frozenset[str]:
        return frozenset({self.lang})

    def load(self) -> Any:
        def loader() -> Any:
            import vosk

            vosk.SetLogLevel(-1)
            try:
                return vosk.Model(str(self.path))
            except Exception as exc:  # noqa: BLE001 - vosk raises plain Exception on a bad model
                raise ModelLoadError(f"cannot load Vosk model {self.path}: {exc}") from None

        return self.models.get(self.key, loader, path_size(self.path))

    def _transcribe(
        self, speech: Speech, lang: str, on_partial: PartialCallback | None, stop: threading.Event
    ) -> str:
        import vosk

        if speech.samples.size == 0:
            return ""
        rec = vosk.KaldiRecognizer(self.load(), speech.sample_rate)
        pcm = (np.clip(speech.samples, -1, 1) * 32767).astype("<i2").tobytes()
        step = int(CHUNK_SECONDS * speech.sample_rate) * 2
        with self.models.inference(self.key):
            try:
                for i in range(0, len(pcm), step):
                    if stop.is_set():
                        raise Cancelled()
                    if rec.AcceptWaveform(pcm[i : i + step]) and on_partial is not None:
                        on_partial(json.loads(rec.Result()).get("text", ""))
                text = json.loads(rec.FinalResult()).get("text", "")
            except (RuntimeError, ValueError) as exc:
                raise EngineError(f"vosk failed: {exc}") from None
        return str(text)
