"""Engine interfaces. Each engine declares what it really serves; the node's
registered capabilities are computed from the engines it loaded.

Engines do blocking work in ``_``-prefixed methods; the public async methods
run them in a worker thread so the node's event loop keeps heartbeating.
Cancellation: when the job is cancelled, the ``stop`` event passed to the
blocking method is set; engines check it at their natural points (between
Whisper segments, between sentences) and raise :class:`Cancelled`, so a long
stage really stops. A native call already running finishes first.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..core.agreement import Word

PartialCallback = Callable[[str], None]
T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside an engine thread when its job was cancelled."""


async def run_cancellable(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args, stop)`` in a thread; on cancellation set ``stop`` and wait briefly."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, stop))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        # give the engine a moment to notice, so the thread does not outlive the job for long
        await asyncio.wait([task], timeout=5)
        raise


class EngineError(Exception):
    """An engine failed on this input. ``code`` is a protocol error code."""

    def __init__(self, message: str, code: str = "node_failed", retryable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Speech:
    samples: np.ndarray  # mono float32 in [-1, 1]
    sample_rate: int


class Engine(ABC):  # noqa: B024 - a common base; subclasses declare the abstract methods
    kind: str = ""
    name: str = ""

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free resources (processes, models)."""


class VADEngine(Engine):
    kind = "vad"

    async def trim(self, speech: Speech) -> Speech:
        return await asyncio.to_thread(self._trim, speech)  # milliseconds; not worth cancelling

    @abstractmethod
    def _trim(self, speech: Speech) -> Speech: ...

    async def voiced(self, speech: Speech) -> list[bool]:
        """Speech or not per 30 ms frame (``audio.FRAME_MS``), to split long audio at pauses."""
        return await asyncio.to_thread(self._voiced, speech)

    def _voiced(self, speech: Speech) -> list[bool]:
        from ..audio import voiced_frames

        return voiced_frames(speech.samples, speech.sample_rate)


class ASREngine(Engine):
    kind = "asr"

    @abstractmethod
    def languages(self) -> frozenset[str]: ...

    async def transcribe(self, speech: Speech, lang: str, on_partial: PartialCallback | None = None) -> str:
        return await run_cancellable(self._transcribe, speech, lang, on_partial)

    async def words(self, speech: Speech, lang: str) -> list[Word]:
        """The words heard, with their times (seconds into ``speech``), for streaming."""
        return await run_cancellable(self._words, speech, lang)

    def _words(self, speech: Speech, lang: str, stop: threading.Event) -> list[Word]:
        """Engines without word times: the text's words spread evenly over the speech."""
        text = self._transcribe(speech, lang, None, stop)
        tokens = text.split()
        if not tokens:
            return []
        step = speech.samples.size / speech.sample_rate / len(tokens)
        return [Word(t, i * step, (i + 1) * step) for i, t in enumerate(tokens)]

    @abstractmethod
    def _transcribe(
        self, speech: Speech, lang: str, on_partial: PartialCallback | None, stop: threading.Event
    ) -> str: ...


class RepairEngine(Engine):
    kind = "repair"

    @abstractmethod
    def languages(self) -> frozenset[str]: ...

    async def repair(self, text: str, lang: str) -> str:
        return self._repair(text, lang)  # rules: microseconds, no thread needed

    @abstractmethod
    def _repair(self, text: str, lang: str) -> str: ...


class MTEngine(Engine):
    kind = "mt"

    @abstractmethod
    def pairs(self) -> frozenset[tuple[str, str]]: ...

    async def translate(self, text: str, src: str, tgt: str) -> str:
        return await run_cancellable(self._translate, text, src, tgt)

    @abstractmethod
    def _translate(self, text: str, src: str, tgt: str, stop: threading.Event) -> str: ...


class TTSEngine(Engine):
    kind = "tts"

    @abstractmethod
    def languages(self) -> frozenset[str]: ...

    async def synthesize(self, text: str, lang: str) -> Speech:
        return await run_cancellable(self._synthesize, text, lang)

    @abstractmethod
    def _synthesize(self, text: str, lang: str, stop: threading.Event) -> Speech: ...
