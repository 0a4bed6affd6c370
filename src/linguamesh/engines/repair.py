"""Rule-based text repair after ASR (normalization for English and Spanish, semantic clean-up for Chinese).

Per language: whitespace and punctuation clean-up, repeated-word removal,
sentence case and final punctuation; for English and Spanish, digits become
words (num2words) so MT and TTS read them; for Chinese, ASCII punctuation
becomes full-width and the spaces ASR puts between Han characters go.
"""

from __future__ import annotations

import re
from typing import Any

from .base import RepairEngine

_WS = re.compile(r"\s+")
_REPEAT = re.compile(r"\b(\w+)(\s+\1\b)+", re.IGNORECASE)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)(?![\w])")
_HAN_SPACE = re.compile(r"(?<=[\u4e00-\u9fff，。？！、])\s+(?=[\u4e00-\u9fff，。？！、])")
_ES_QUESTION = re.compile(
    r"^(qué|que|cómo|como|dónde|donde|cuándo|cuando|por qué|quién|quien|cuál|cual|cuánto|cuanto)\b",
    re.IGNORECASE,
)
_ZH_PUNCT = str.maketrans({",": "，", "?": "？", "!": "！", ";": "；", ":": "：", ".": "。"})
FILLERS = {"en": ("uh", "um", "erm", "uhm"), "es": ("eh", "este", "mmm")}


class RuleRepair(RepairEngine):
    name = "rule-repair"

    def __init__(self, cfg: dict[str, Any]) -> None:
        self._languages = frozenset(cfg.get("languages", ["en", "es", "zh"]))
        unknown = self._languages - {"en", "es", "zh"}
        if unknown:
            raise ValueError(f"rule-repair has rules for en, es, zh only, not {sorted(unknown)}")
        self.numbers = bool(cfg.get("numbers_to_words", True))

    def languages(self) -> frozenset[str]:
        return self._languages

    def _repair(self, text: str, lang: str) -> str:
        text = _WS.sub(" ", text).strip()
        if not text:
            return ""
        if lang == "zh":
            return self._zh(text)
        for filler in FILLERS.get(lang, ()):
            text = re.sub(rf"\b{filler}\b[,]?\s*", "", text, flags=re.IGNORECASE)
        text = _REPEAT.sub(r"\1", text)
        text = _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip()
        if self.numbers:
            text = _NUMBER.sub(lambda m: _number_words(m.group(1), lang), text)
        if not text:
            return ""
        text = text[0].upper() + text[1:]
        if text[-1] not in ".!?…":
            question = lang == "es" and _ES_QUESTION.match(text)
            text += "?" if question else "."
        if lang == "es" and text.endswith("?") and not text.startswith("¿"):
            text = "¿" + text
        return text

    def _zh(self, text: str) -> str:
        text = text.translate(_ZH_PUNCT)
        text = _HAN_SPACE.sub("", text)
        if text[-1] not in "。？！…":
            text += "。"
        return text


def _number_words(raw: str, lang: str) -> str:
    from num2words import num2words

    # English writes 1,000.5; Spanish writes 1.000,5
    plain = raw.replace(",", "") if lang == "en" else raw.replace(".", "").replace(",", ".")
    try:
        value: float | int = float(plain) if "." in plain else int(plain)
        return str(num2words(value, lang=lang))
    except (NotImplementedError, OverflowError, ValueError):
        return raw
