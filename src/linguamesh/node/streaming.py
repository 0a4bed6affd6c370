"""Incremental ASR of speech that is still arriving the growing buffer is
decoded again on a cadence and the words two consecutive decodes agree on are committed
(LocalAgreement-2, ``core/agreement.py``).

The buffer does not grow without bound: once it is longer than ``keep_seconds``, the
audio up to the end of the last committed sentence (or, without one, the last committed
word) is dropped and later decodes start there — the committed words before it never
change, so they need not be heard again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.agreement import LocalAgreement, Word, before, text_of
from ..core.sentences import ends_sentence
from ..engines.base import ASREngine, Speech

#: A word ending this close to the end of the audio decoded is not committed yet.
HOLD_SECONDS = 0.5
#: ... and the first words of an utterance wait for more right context: a decode of the
#: first second of speech guesses ("Don't" for "Good morning"), and a committed word is
#: never taken back
FIRST_HOLD_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """The transcript so far: ``text``, of which the first ``stable`` characters are
    committed (will not change); ``sentences``: committed sentences not reported before."""

    text: str
    stable: int
    sentences: list[str]


class StreamingTranscriber:
    def __init__(
        self, asr: ASREngine, lang: str, sample_rate: int = 16000, keep_seconds: float = 15.0
    ) -> None:
        self.asr = asr
        self.lang = lang
        self.rate = sample_rate
        self.keep = keep_seconds
        self.agreement = LocalAgreement()
        self._audio = np.zeros(0, np.float32)
        self._offset = 0.0  # seconds of audio dropped from the buffer's start
        self._heard = 0.0  # seconds received in all
        self._sentence_from = 0  # committed words already reported in sentences
        self._first = 0  # committed words of the previous utterance (its carried-over context)
        #: decodes run (the cost of streaming: each re-decodes the buffer)
        self.decodes = 0
        self.decoded_seconds = 0.0
        self._covered = 0.0

    @property
    def heard(self) -> float:
        return self._heard

    @property
    def own_committed(self) -> list[Word]:
        """The committed words of this utterance (not the context carried into it)."""
        return self.agreement.committed[self._first :]

    def prefix(self, audio: np.ndarray, words: list[Word]) -> None:
        """Start with the previous utterance's last seconds (``audio``, ending where this
        one starts) and its committed words in them (times before 0): decodes hear the
        speech in context, and those words are neither shown nor reported again."""
        self._audio = audio.astype(np.float32, copy=False)
        self._offset = -audio.size / self.rate
        self.agreement.committed = list(words)
        self.agreement.boundary = 0.0
        self._first = self._sentence_from = len(words)

    def tail(self, until: float, seconds: float) -> tuple[np.ndarray, list[Word]]:
        """The audio of the last ``seconds`` before ``until`` and the committed words in it,
        with times from ``until`` (what the next utterance starts from)."""
        start = max(self._offset, until - seconds)
        a = max(0, round((start - self._offset) * self.rate))
        b = max(a, round((until - self._offset) * self.rate))
        words = [
            Word(w.text, w.start - until, min(w.end, until) - until)
            for w in self.agreement.committed
            if w.start >= start and before(w, until)
        ]
        return self._audio[a:b].copy(), words

    def truncate(self, seconds: float) -> None:
        """The speech ends at ``seconds`` (from the start of all audio heard): drop the rest,
        and the words heard in it (the next utterance hears them)."""
        keep = max(0, round((seconds - self._offset) * self.rate))
        if keep < self._audio.size:
            self._audio = self._audio[:keep]
            self._heard = self._offset + keep / self.rate
        self.agreement.drop_after(seconds)
        self._sentence_from = min(self._sentence_from, len(self.agreement.committed))

    def feed(self, samples: np.ndarray) -> None:
        self._audio = np.concatenate([self._audio, samples.astype(np.float32, copy=False)])
        self._heard += samples.size / self.rate

    async def step(self) -> Hypothesis:
        """Decode what is buffered; commit what the last two decodes agree on, except words
        that end in the last HOLD_SECONDS of the audio (maybe still being spoken)."""
        words = await self._decode()
        hold = HOLD_SECONDS if self.agreement.committed else FIRST_HOLD_SECONDS
        self.agreement.update(words, until=self._covered - hold)
        self._trim()
        return self._hypothesis()

    async def finish(self, decode: bool = True) -> Hypothesis:
        """The speech ended: one last decode, and everything it heard is committed. Without
        ``decode`` the latest decode's words are committed as they are (it heard all the
        speech already: see ``covered``)."""
        if decode:
            self.agreement.update(await self._decode())
        self.agreement.finish()
        return self._hypothesis(final=True)

    @property
    def covered(self) -> float:
        """How far (seconds from the start) the latest finished decode heard."""
        return self._covered

    async def _decode(self) -> list[Word]:
        if self._audio.size == 0:
            return []
        self.decodes += 1
        self.decoded_seconds += self._audio.size / self.rate
        end = self._offset + self._audio.size / self.rate
        words = await self.asr.words(Speech(self._audio, self.rate), self.lang)
        self._covered = end
        return [Word(w.text, w.start + self._offset, w.end + self._offset) for w in words]

    def _trim(self) -> None:
        if self._audio.size / self.rate <= self.keep or not self.agreement.committed:
            return
        committed = self.agreement.committed
        ends = [w.end for w in committed if ends_sentence(w.text)]
        cut = (ends[-1] if ends else committed[-1].end) - self._offset
        if cut <= 0:
            return
        drop = min(self._audio.size, int(cut * self.rate))
        self._audio = self._audio[drop:]
        self._offset += drop / self.rate

    def _hypothesis(self, final: bool = False) -> Hypothesis:
        committed = text_of(self.own_committed)
        tentative = text_of(self.agreement.tentative())
        text = f"{committed} {tentative}".strip()
        words = self.agreement.committed
        done = [i + 1 for i in range(self._sentence_from, len(words)) if ends_sentence(words[i].text)]
        if final and len(words) > self._sentence_from:
            done.append(len(words))
        sentences = []
        start = self._sentence_from
        for end in done:
            if end > start:
                sentences.append(text_of(words[start:end]))
                start = end
        self._sentence_from = start
        return Hypothesis(text, len(committed), sentences)
