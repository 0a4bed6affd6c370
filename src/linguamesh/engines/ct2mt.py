"""Neural MT with CTranslate2: NLLB, M2M100 and OPUS-MT model directories.

An operator converts a model once (``ct2-transformers-converter`` or
``ct2-opus-mt-converter``) and points the node at the directory:

* ``family = "nllb"``: ``model.bin`` + ``sentencepiece.bpe.model``; languages as
  ISO 639-1 codes, mapped to NLLB's (``en`` -> ``eng_Latn``). NLLB weights are
  CC-BY-NC 4.0: not for commercial use.
* ``family = "m2m100"``: ``model.bin`` + ``sentencepiece.bpe.model``; language tokens
  ``__en__``. MIT weights.
* ``family = "opus-mt"``: ``model.bin`` + ``source.spm`` + ``target.spm``; one pair,
  given as ``pair = "en-es"``. Most OPUS-MT models are CC-BY 4.0.

Models load through the node's model manager (LRU under its memory limit).
"""

from __future__ import annotations

import threading
from typing import Any

from .base import Cancelled, EngineError, MTEngine
from .bundled import resolve
from .models import ModelLoadError, ModelManager, device_options, path_size, placement

NLLB_CODES = {
    "en": "eng_Latn", "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "it": "ita_Latn",
    "pt": "por_Latn", "nl": "nld_Latn", "ru": "rus_Cyrl", "uk": "ukr_Cyrl", "pl": "pol_Latn",
    "zh": "zho_Hans", "ja": "jpn_Jpan", "ko": "kor_Hang", "ar": "arb_Arab", "hi": "hin_Deva",
    "tr": "tur_Latn", "vi": "vie_Latn", "id": "ind_Latn", "ca": "cat_Latn", "sv": "swe_Latn",
}  # fmt: skip

FAMILIES = ("nllb", "m2m100", "opus-mt")


class _Loaded:
    def __init__(self, translator: Any, src_sp: Any, tgt_sp: Any) -> None:
        self.translator = translator
        self.src_sp = src_sp
        self.tgt_sp = tgt_sp


class CTranslate2MT(MTEngine):
    def __init__(self, cfg: dict[str, Any], models: ModelManager) -> None:
        self.family = str(cfg.get("family", ""))
        if self.family not in FAMILIES:
            raise ModelLoadError(
                f"ctranslate2 family must be one of {', '.join(FAMILIES)}, not {self.family!r}"
            )
        if "model" not in cfg:
            raise ModelLoadError('ctranslate2 engine needs `model = "/path/to/ct2-model-dir"`')
        self.path = resolve(str(cfg["model"]))
        #: which GPU, and translations that may run at once (CTranslate2's inter_threads)
        self.device, self.compute_type, self.device_index, self.num_workers, self.beam_size = device_options(
            cfg, "ctranslate2", beam_size=2
        )
        self.max_length = int(cfg.get("max_decoding_length", 256))
        self.models = models
        self.name = f"ctranslate2-{self.family}:{self.path.name}"
        self.key = f"ct2:{self.path}:{self.compute_type}:{self.device}:{self.device_index}"
        if self.family == "opus-mt":
            pair = str(cfg.get("pair", ""))
            src, _, tgt = pair.partition("-")
            if not src or not tgt:
                raise ModelLoadError('opus-mt models translate one pair: set `pair = "en-es"`')
            self._pairs = frozenset({(src, tgt)})
            self.spm = (self.path / "source.spm", self.path / "target.spm")
        else:
            langs = list(cfg.get("languages", []))
            if len(langs) < 2:
                raise ModelLoadError(f"{self.family} needs `languages = [...]` with at least two codes")
            if self.family == "nllb":
                unknown = [x for x in langs if x not in NLLB_CODES]
                if unknown:
                    raise ModelLoadError(f"no NLLB code known for {unknown}; known: {sorted(NLLB_CODES)}")
            self._pairs = frozenset((a, b) for a in langs for b in langs if a != b)
            sp = self.path / "sentencepiece.bpe.model"
            self.spm = (sp, sp)
        self._check_files()

    def _check_files(self) -> None:
        if not (self.path / "model.bin").is_file():
            raise ModelLoadError(f"{self.path} has no model.bin: not a CTranslate2 model directory")
        for sp in self.spm:
            if not sp.is_file():
                raise ModelLoadError(f"{self.path} has no {sp.name} (SentencePiece model)")

    def pairs(self) -> frozenset[tuple[str, str]]:
        return self._pairs

    def load(self) -> _Loaded:
        def loader() -> _Loaded:
            import ctranslate2
            import sentencepiece as spm

            try:
                translator = ctranslate2.Translator(
                    str(self.path),
                    device=self.device,
                    device_index=self.device_index,
                    compute_type=self.compute_type,
                    inter_threads=self.num_workers,
                )
            except (RuntimeError, ValueError) as exc:
                raise ModelLoadError(f"cannot load CTranslate2 model {self.path}: {exc}") from None
            try:
                src_sp = spm.SentencePieceProcessor(model_file=str(self.spm[0]))
                tgt_sp = (
                    src_sp
                    if self.spm[1] == self.spm[0]
                    else spm.SentencePieceProcessor(model_file=str(self.spm[1]))
                )
            except (RuntimeError, OSError) as exc:
                raise ModelLoadError(f"bad SentencePiece model in {self.path}: {exc}") from None
            return _Loaded(translator, src_sp, tgt_sp)

        loaded: _Loaded = self.models.get(
            self.key, loader, path_size(self.path), device=placement(self.device, self.device_index)
        )
        return loaded

    def _tokens(self, m: _Loaded, text: str, src: str, tgt: str) -> tuple[list[str], list[str] | None]:
        pieces: list[str] = m.src_sp.encode(text, out_type=str)
        if self.family == "nllb":
            return [NLLB_CODES[src], *pieces, "</s>"], [NLLB_CODES[tgt]]
        if self.family == "m2m100":
            return [f"__{src}__", *pieces, "</s>"], [f"__{tgt}__"]
        return [*pieces, "</s>"], None

    def _translate(self, text: str, src: str, tgt: str, stop: threading.Event) -> str:
        if (src, tgt) not in self._pairs:
            raise EngineError(f"{self.name} has no {src}-{tgt} pair", "unsupported_language_pair", False)
        if stop.is_set():
            raise Cancelled()
        m = self.load()
        source, prefix = self._tokens(m, text, src, tgt)
        with self.models.inference(self.key):
            try:
                out = m.translator.translate_batch(
                    [source],
                    target_prefix=[prefix] if prefix else None,
                    beam_size=self.beam_size,
                    max_decoding_length=self.max_length,
                )
            except (RuntimeError, ValueError) as exc:
                raise EngineError(f"ctranslate2 failed: {exc}") from None
        tokens = out[0].hypotheses[0]
        if prefix and tokens[: len(prefix)] == prefix:
            tokens = tokens[len(prefix) :]
        return str(m.tgt_sp.decode_pieces([t for t in tokens if t != "</s>"])).strip()
