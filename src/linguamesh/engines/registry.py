"""Build engines from node configuration and compute the capabilities they give."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol import Capabilities, ModelInfo
from .base import ASREngine, Engine, MTEngine, RepairEngine, TTSEngine, VADEngine

Factory = Callable[[dict[str, Any]], list[Engine]]

_FACTORIES: dict[str, Factory] = {}


class EngineConfigError(ValueError):
    pass


def register(kind: str) -> Callable[[Factory], Factory]:
    def deco(fn: Factory) -> Factory:
        _FACTORIES[kind] = fn
        return fn

    return deco


@register("test")
def _test(cfg: dict[str, Any]) -> list[Engine]:
    from .testing import TestEngineSet

    return TestEngineSet(cfg).engines()


def known_kinds() -> list[str]:
    return sorted(_FACTORIES)


@dataclass
class EngineSet:
    vad: list[VADEngine] = field(default_factory=list)
    asr: list[ASREngine] = field(default_factory=list)
    repair: list[RepairEngine] = field(default_factory=list)
    mt: list[MTEngine] = field(default_factory=list)
    tts: list[TTSEngine] = field(default_factory=list)

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


def build(configs: list[dict[str, Any]]) -> EngineSet:
    es = EngineSet()
    for i, cfg in enumerate(configs):
        kind = cfg.get("kind")
        if not isinstance(kind, str) or kind not in _FACTORIES:
            raise EngineConfigError(
                f"engines[{i}]: unknown kind {kind!r}; known kinds: {', '.join(known_kinds())}"
            )
        for engine in _FACTORIES[kind](cfg):
            es.add(engine)
    return es
