"""ASR with faster-whisper on any CTranslate2 Whisper model directory.

Decoding is greedy by default (``beam_size = 1``; a GPU node may afford more) with
``temperature=0`` and no conditioning on previous text: the library's temperature
fallback took 12.8 s on one bad 4.3 s clip which no live user waits for. On a GPU,
``device_index`` picks the device and ``num_workers`` lets that many decodes of one
model run at once (with one, concurrent jobs wait for each other). ``max_new_tokens`` and
``no_repeat_ngram_size`` stop the hallucination loops Whisper falls into on
noise.

Streaming decodes (``words``) do not pad the audio to Whisper's 30 s window: the
encoder gets the audio plus a second of padding, at least 10 s (1,000 mel frames).
The encoder's cost is most of a decode and grows with the window, so a decode of
a few seconds takes a third of the time (0.6 s instead of 1.5 s for 3.6 s of speech
here) with the same words; shorter windows than 10 s made Whisper repeat itself on
very short audio ("Hello Hello Hello"), so 10 s is the floor.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.agreement import Word
from .base import ASREngine, Cancelled, EngineError, PartialCallback, Speech
from .bundled import resolve
from .models import ModelLoadError, ModelManager, device_options, path_size, placement

#: The shortest encoder window of a streaming decode, in mel frames (10 ms each).
MIN_WINDOW_FRAMES = 1000
FULL_WINDOW_FRAMES = 3000

#: Languages the multilingual Whisper models recognise well enough to offer by default.
DEFAULT_LANGUAGES = ("en", "es")


def check_whisper_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory (expected a CTranslate2 Whisper model)")
    for name in ("model.bin", "config.json"):
        if not (path / name).is_file():
            raise ModelLoadError(f"{path} has no {name}: not a CTranslate2 Whisper model directory")
    if not (path / "tokenizer.json").is_file() and not (path / "vocabulary.txt").is_file():
        raise ModelLoadError(f"{path} has neither tokenizer.json nor vocabulary.txt")
    try:
        json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path}/config.json is not valid JSON: {exc}") from None


class FasterWhisperASR(ASREngine):
    def __init__(self, cfg: dict[str, Any], models: ModelManager) -> None:
        self.spec = str(cfg.get("model", "bundled:whisper-base"))
        self.threads = int(cfg.get("cpu_threads", 0))
        self.max_new_tokens = int(cfg.get("max_new_tokens", 128))
        #: which GPU (``device = "cuda"``); decodes that may run at once on one model (one
        #: worker serialises concurrent jobs); beams (1: greedy, see the module's docstring)
        self.device, self.compute_type, self.device_index, self.num_workers, self.beam_size = device_options(
            cfg, "faster-whisper", beam_size=1
        )
        self.models = models
        self.path = resolve(self.spec)
        check_whisper_dir(self.path)
        english_only = self.path.name.endswith(".en") or bool(cfg.get("english_only", False))
        langs = cfg.get("languages") or (["en"] if english_only else list(DEFAULT_LANGUAGES))
        self._languages = frozenset(langs)
        self.name = f"faster-whisper:{self.path.name}"
        self.key = f"faster-whisper:{self.path}:{self.compute_type}:{self.device}:{self.device_index}"

    def languages(self) -> frozenset[str]:
        return self._languages

    def load(self) -> Any:
        def loader() -> Any:
            from faster_whisper import WhisperModel

            try:
                return WhisperModel(
                    str(self.path),
                    device=self.device,
                    device_index=self.device_index,
                    compute_type=self.compute_type,
                    cpu_threads=self.threads,
                    num_workers=self.num_workers,
                )
            except (RuntimeError, ValueError, OSError) as exc:
                raise ModelLoadError(f"cannot load Whisper model {self.path}: {exc}") from None

        return self.models.get(
            self.key, loader, path_size(self.path), device=placement(self.device, self.device_index)
        )

    def _segments(self, speech: Speech, lang: str, stop: threading.Event, *, words: bool) -> Iterator[Any]:
        """Decode, one segment at a time (greedy, see the module's docstring); with ``words``
        each segment carries word times. Raises Cancelled once ``stop`` is set."""
        model = self.load()
        with self.models.inference(self.key):
            try:
                segments, _info = model.transcribe(
                    speech.samples,
                    language=lang,
                    beam_size=self.beam_size,
                    temperature=0.0,
                    condition_on_previous_text=False,
                    without_timestamps=not words,
                    word_timestamps=words,
                    max_new_tokens=self.max_new_tokens,
                    no_repeat_ngram_size=3,
                    vad_filter=False,
                )
                for seg in segments:  # a generator: decoding happens while we iterate
                    if stop.is_set():
                        raise Cancelled()
                    yield seg
            except (RuntimeError, ValueError) as exc:
                raise EngineError(f"whisper failed: {exc}") from None

    def _transcribe(
        self, speech: Speech, lang: str, on_partial: PartialCallback | None, stop: threading.Event
    ) -> str:
        if speech.samples.size == 0:
            return ""
        texts: list[str] = []
        for seg in self._segments(speech, lang, stop, words=False):
            texts.append(seg.text.strip())
            if on_partial is not None:
                on_partial(" ".join(texts))
        return " ".join(t for t in texts if t)

    def _words(self, speech: Speech, lang: str, stop: threading.Event) -> list[Word]:
        if speech.samples.size == 0:
            return []
        model = self.load()
        feats = model.feature_extractor(speech.samples)
        frames = feats.shape[-1]
        if frames + 100 > FULL_WINDOW_FRAMES:  # a whole window or more: the library's own loop
            out: list[Word] = []
            for seg in self._segments(speech, lang, stop, words=True):
                out += [Word(w.word.strip(), float(w.start), float(w.end)) for w in seg.words or []]
            return _merge_punctuation([w for w in out if w.text])
        with self.models.inference(self.key):
            try:
                return self._short_window(model, feats, frames, lang)
            except (RuntimeError, ValueError) as exc:
                raise EngineError(f"whisper failed: {exc}") from None

    def _short_window(self, model: Any, feats: Any, frames: int, lang: str) -> list[Word]:
        """One greedy decode of audio shorter than Whisper's window, on a window cut to
        the audio (see the module's docstring), with word times from the alignment."""
        import ctranslate2
        import numpy as np
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        window = max(MIN_WINDOW_FRAMES, -(-frames // 100) * 100 + 100)
        features = np.ascontiguousarray(pad_or_trim(feats, window)[None])
        encoded = model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        tok = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=lang)
        prompt = model.get_prompt(tok, [], without_timestamps=True)
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=self.beam_size,
            max_length=len(prompt) + self.max_new_tokens,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tok, (-1,)),
            no_repeat_ngram_size=3,
        )
        tokens = [t for t in result[0].sequences_ids[0] if t < tok.eot]
        if not tokens:
            return []
        aligned = model.find_alignment(tok, [tokens], encoded, frames)[0]
        words = [Word(str(w["word"]).strip(), float(w["start"]), float(w["end"])) for w in aligned]
        return _merge_punctuation([w for w in words if w.text])


def _merge_punctuation(words: list[Word]) -> list[Word]:
    """Punctuation aligned as a word of its own joins the word before it ("morning" ".")."""
    out: list[Word] = []
    for w in words:
        if out and not any(ch.isalnum() for ch in w.text):
            last = out[-1]
            out[-1] = Word(last.text + w.text, last.start, max(last.end, w.end))
        else:
            out.append(w)
    return out
