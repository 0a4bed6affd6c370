"""A configurable engine set for tests and benchmarks only — never for real users.

Every knob comes from configuration: per-stage delays, a failure with a given
code, the text it "recognises". Delays are asyncio sleeps, so a cancelled job
stops at once and many jobs can run on one core.

``[[engines]] kind = "test"`` in a node config with, for example::

    languages = ["en", "es"]     # ASR/TTS languages; MT between every pair
    delay_ms = 50                # per stage (asr, repair, nmt, tts)
    asr_delay_ms = 200           # override one stage
    text = "hello world"         # the transcript; "{index}" is replaced
    fail = "node_failed"         # every job fails with this code ("crash": the engine raises
                                 # a plain exception, as an engine bug would)
    fail_every = 3               # ... or only every 3rd job
    partials = true              # send an asr partial halfway
    tts = true                   # produce a short tone as speech
    tts_seconds = 0.1            # ... this long
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np

from ..core.agreement import Word
from .base import (
    ASREngine,
    EngineError,
    MTEngine,
    PartialCallback,
    RepairEngine,
    Speech,
    TTSEngine,
)


class TestEngineSet:
    """Builds the four test engines from one config table."""

    __test__ = False  # not a pytest class

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.languages = frozenset(cfg.get("languages", ["en", "es"]))
        base = float(cfg.get("delay_ms", 0.0))
        self.delay = {
            s: float(cfg.get(f"{s}_delay_ms", base)) / 1000 for s in ("asr", "repair", "nmt", "tts")
        }
        self.text = str(cfg.get("text", "test utterance {seconds}"))
        self.fail = cfg.get("fail")
        self.fail_every = int(cfg.get("fail_every", 1))
        self.partials = bool(cfg.get("partials", True))
        self.tts = bool(cfg.get("tts", True))
        self.tts_seconds = float(cfg.get("tts_seconds", 0.1))
        self.repair = bool(cfg.get("repair", True))
        self._counter = itertools.count(1)

    def engines(self) -> list[Any]:
        out: list[Any] = [_TestASR(self), _TestMT(self)]
        if self.repair:
            out.append(_TestRepair(self))
        if self.tts:
            out.append(_TestTTS(self))
        return out


class _TestASR(ASREngine):
    name = "test-asr"

    def __init__(self, s: TestEngineSet) -> None:
        self.s = s

    def languages(self) -> frozenset[str]:
        return self.s.languages

    async def transcribe(self, speech: Speech, lang: str, on_partial: PartialCallback | None = None) -> str:
        n = next(self.s._counter)
        if self.s.fail and n % self.s.fail_every == 0:
            await asyncio.sleep(self.s.delay["asr"])
            if self.s.fail == "crash":
                raise RuntimeError("test engine crashed (configured)")
            raise EngineError(f"test engine configured to fail ({self.s.fail})", str(self.s.fail))
        text = self.s.text.format(seconds=f"{speech.samples.size / speech.sample_rate:.2f}", n=n, lang=lang)
        if self.s.partials and on_partial is not None:
            await asyncio.sleep(self.s.delay["asr"] / 2)
            on_partial(text.split(" ")[0])
            await asyncio.sleep(self.s.delay["asr"] / 2)
        elif self.s.delay["asr"]:
            await asyncio.sleep(self.s.delay["asr"])
        return text

    async def words(self, speech: Speech, lang: str) -> list[Word]:
        """Streaming decodes: the configured text's words spread over the speech (a
        ``{seconds}`` in it changes with every decode, as a real tail does)."""
        if self.s.fail and self.s.fail_every == 1:
            await asyncio.sleep(self.s.delay["asr"])
            raise EngineError(f"test engine configured to fail ({self.s.fail})", str(self.s.fail))
        seconds = speech.samples.size / speech.sample_rate
        if self.s.delay["asr"]:
            await asyncio.sleep(self.s.delay["asr"])
        tokens = self.s.text.format(seconds=f"{seconds:.2f}", n=0, lang=lang).split()
        # as spoken: each word keeps its time as the audio grows (0.3 s each; the last
        # word lasts to the end)
        times = [min(i * 0.3, seconds) for i in range(len(tokens))] + [seconds]
        return [Word(t, times[i], max(times[i + 1], times[i])) for i, t in enumerate(tokens)]

    def _transcribe(self, speech: Speech, lang: str, on_partial: PartialCallback | None, stop: Any) -> str:
        raise NotImplementedError("async only")


class _TestRepair(RepairEngine):
    name = "test-repair"

    def __init__(self, s: TestEngineSet) -> None:
        self.s = s

    def languages(self) -> frozenset[str]:
        return self.s.languages

    async def repair(self, text: str, lang: str) -> str:
        if self.s.delay["repair"]:
            await asyncio.sleep(self.s.delay["repair"])
        return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")

    def _repair(self, text: str, lang: str) -> str:
        raise NotImplementedError("async only")


class _TestMT(MTEngine):
    name = "test-mt"

    def __init__(self, s: TestEngineSet) -> None:
        self.s = s

    def pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset((a, b) for a in self.s.languages for b in self.s.languages if a != b)

    async def translate(self, text: str, src: str, tgt: str) -> str:
        if self.s.delay["nmt"]:
            await asyncio.sleep(self.s.delay["nmt"])
        return f"[{tgt}] {text}"

    def _translate(self, text: str, src: str, tgt: str, stop: Any) -> str:
        raise NotImplementedError("async only")


class _TestTTS(TTSEngine):
    name = "test-tts"

    def __init__(self, s: TestEngineSet) -> None:
        self.s = s

    def languages(self) -> frozenset[str]:
        return self.s.languages

    async def synthesize(self, text: str, lang: str) -> Speech:
        if self.s.delay["tts"]:
            await asyncio.sleep(self.s.delay["tts"])
        t = np.arange(int(16000 * self.s.tts_seconds), dtype=np.float32) / 16000
        return Speech((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)

    def _synthesize(self, text: str, lang: str, stop: Any) -> Speech:
        raise NotImplementedError("async only")
