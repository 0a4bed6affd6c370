"""Build engines from node configuration and compute the capabilities they give."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..observability.logging import get_logger
from ..protocol import Capabilities, ModelInfo
from .base import ASREngine, Engine, EngineError, MTEngine, RepairEngine, TTSEngine, VADEngine
from .models import ModelLoadError, ModelManager

log = get_logger("linguamesh.node.engines")

Factory = Callable[[dict[str, Any], ModelManager], list[Engine]]

_FACTORIES: dict[str, Factory] = {}


class EngineConfigError(ValueError):
    pass


def register(kind: str) -> Callable[[Factory], Factory]:
    def deco(fn: Factory) -> Factory:
        _FACTORIES[kind] = fn
        return fn

    return deco


@register("test")
def _test(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .testing import TestEngineSet

    return TestEngineSet(cfg).engines()


@register("faster-whisper")
def _whisper(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .whisper import FasterWhisperASR

    return [FasterWhisperASR(cfg, models)]


@register("vosk")
def _vosk(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .vosk_asr import VoskASR

    return [VoskASR(cfg, models)]


@register("webrtc-vad")
def _vad(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .vad import WebRtcVAD

    return [WebRtcVAD(cfg)]


@register("rule-repair")
def _repair(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .repair import RuleRepair

    return [RuleRepair(cfg)]


@register("apertium")
def _apertium(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .apertium import ApertiumMT

    return [ApertiumMT(cfg, models)]


@register("ctranslate2")
def _ct2(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .ct2mt import CTranslate2MT

    return [CTranslate2MT(cfg, models)]


@register("piper")
def _piper(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .piper_tts import PiperTTS

    return [PiperTTS(cfg, models)]


@register("espeak-ng")
def _espeak(cfg: dict[str, Any], models: ModelManager) -> list[Engine]:
    from .espeak_tts import EspeakTTS

    return [EspeakTTS(cfg, models)]


@dataclass(frozen=True)
class EngineFailure:
    index: int
    kind: str
    error: str


def known_kinds() -> list[str]:
    return sorted(_FACTORIES)


@dataclass
class EngineSet:
    vad: list[VADEngine] = field(default_factory=list)
    asr: list[ASREngine] = field(default_factory=list)
    repair: list[RepairEngine] = field(default_factory=list)
    mt: list[MTEngine] = field(default_factory=list)
    tts: list[TTSEngine] = field(default_factory=list)
    failures: list[EngineFailure] = field(default_factory=list)
    models_manager: ModelManager = field(default_factory=ModelManager)

    def add(self, engine: Engine) -> None:
        if isinstance(engine, VADEngine):
            self.vad.append(engine)
        elif isinstance(engine, ASREngine):
            self.asr.append(engine)
        elif isinstance(engine, RepairEngine):
            self.repair.append(engine)
        elif isinstance(engine, MTEngine):
            self.mt.append(engine)
        elif isinstance(engine, TTSEngine):
            self.tts.append(engine)
        else:
            raise EngineConfigError(f"{engine!r} is not an engine")

    def all(self) -> list[Engine]:
        return [*self.vad, *self.asr, *self.repair, *self.mt, *self.tts]

    def capabilities(self) -> Capabilities:
        asr = sorted({lang for e in self.asr for lang in e.languages()})
        return Capabilities(
            asr_languages=asr,
            nmt_pairs=sorted({pair for e in self.mt for pair in e.pairs()}),
            tts_languages=sorted({lang for e in self.tts for lang in e.languages()}),
            repair_languages=sorted({lang for e in self.repair for lang in e.languages()}),
            semantic_languages=[],
        )

    def models(self) -> list[ModelInfo]:
        out = []
        for e in self.asr:
            out.append(ModelInfo(name=e.name, kind="asr", languages=sorted(e.languages())))
        for r in self.repair:
            out.append(ModelInfo(name=r.name, kind="repair", languages=sorted(r.languages())))
        for m in self.mt:
            langs = sorted({x for pair in m.pairs() for x in pair})
            out.append(ModelInfo(name=m.name, kind="mt", languages=langs))
        for t in self.tts:
            out.append(ModelInfo(name=t.name, kind="tts", languages=sorted(t.languages())))
        return out

    def asr_for(self, lang: str) -> ASREngine | None:
        return next((e for e in self.asr if lang in e.languages()), None)

    def repair_for(self, lang: str) -> RepairEngine | None:
        return next((e for e in self.repair if lang in e.languages()), None)

    def mt_for(self, src: str, tgt: str) -> MTEngine | None:
        return next((e for e in self.mt if (src, tgt) in e.pairs()), None)

    def tts_for(self, lang: str) -> TTSEngine | None:
        return next((e for e in self.tts if lang in e.languages()), None)

    def close(self) -> None:
        for e in self.all():
            e.close()
        self.models_manager.close()


def build(
    configs: list[dict[str, Any]],
    models: ModelManager | None = None,
    *,
    preload: bool | Iterable[str] = False,
    strict: bool = False,
) -> EngineSet:
    """Create the configured engines.

    An engine whose model is missing or broken is left out and recorded in
    ``failures`` (the node then registers without what it would have given);
    with ``strict`` the first failure raises instead. An unknown ``kind`` is a
    configuration error and always raises. With ``preload`` (True, or a list of
    engine kinds) those engines' models are loaded now, so a corrupt file is found
    at start-up; an engine config can also say ``preload = true`` itself.
    """
    preload_kinds = None if isinstance(preload, bool) else set(preload)
    es = EngineSet(models_manager=models or ModelManager())
    for i, cfg in enumerate(configs):
        kind = cfg.get("kind")
        if not isinstance(kind, str) or kind not in _FACTORIES:
            raise EngineConfigError(
                f"engines[{i}]: unknown kind {kind!r}; known kinds: {', '.join(known_kinds())}"
            )
        try:
            engines = _FACTORIES[kind](cfg, es.models_manager)
            wanted = preload is True or (preload_kinds is not None and kind in preload_kinds)
            if wanted or cfg.get("preload", False):
                for engine in engines:
                    load = getattr(engine, "load", None)
                    if load is not None:
                        load()
        except (ModelLoadError, EngineError, ValueError, OSError, ImportError) as exc:
            if strict:
                raise
            es.failures.append(EngineFailure(i, kind, str(exc)))
            log.error("engine.unavailable", index=i, kind=kind, error=str(exc))
            continue
        for engine in engines:
            es.add(engine)
    return es
