"""Committing words of a growing transcript: LocalAgreement-2. Pure.

A streaming recogniser decodes the audio heard so far again and again (every half
second or so) and each decode may change its mind about the last words. A word is
*committed* — shown as stable, translated, never changed again — once two consecutive
decodes agree on it and on every word before it (the policy of ufal/whisper_streaming,
Macháček et al. 2023). What follows the committed words in the latest decode is the
*tentative* tail, shown as a draft.

Words carry times (seconds from the start of the utterance), so the recogniser can drop
audio whose words are all committed and decode only the rest; a decode of the rest
starts near the last committed word, and the words it repeats from before that point
are recognised by their times and text and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A word of a new decode that ends this close before the last committed word's end is
#: taken to be that word heard again.
OVERLAP_SECONDS = 0.1
#: How many committed words a new decode may repeat at its start.
MAX_REPEAT = 5
#: Before the first word of an utterance that starts with the previous one's words as
#: context (``boundary``): how far after the context's end a repeat of its last words may
#: start (alignment is approximate, and a pause, not a word, follows the context).
REPEAT_SLACK = 0.3

_PUNCT = re.compile(r"[^\w']+")


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float
    end: float


def norm(text: str) -> str:
    """A word as compared between decodes: lower case, no punctuation."""
    return _PUNCT.sub("", text.lower())


class LocalAgreement:
    def __init__(self) -> None:
        #: where the words carried in as context end and this utterance begins (None: none)
        self.boundary: float | None = None
        self.committed: list[Word] = []
        self._previous: list[Word] = []
        self._previous_until = float("inf")

    @property
    def committed_end(self) -> float:
        return self.committed[-1].end if self.committed else 0.0

    def update(self, hypothesis: list[Word], until: float = float("inf")) -> list[Word]:
        """Take the latest decode; return the words it commits (maybe none). A word that
        ends after ``until`` is not committed yet: it may be a word still being spoken,
        heard in part ("rest" of "restaurant" twice in a row)."""
        new = self._after_committed(hypothesis)
        agreed = 0
        for a, b in zip(self._previous, new, strict=False):
            if norm(a.text) != norm(b.text):
                break
            agreed += 1
        # the decode's last word may be cut off by the end of the audio: it waits for the
        # word after it (or the end of speech: ``finish``)
        agreed = min(agreed, len(new) - 1)
        # ... and a word both decodes agree on must end early enough in both: Whisper hears
        # a word cut off by the end of the audio as a shorter one, followed by a guess,
        # twice in a row ("The rest rough." and "The rest run to open." for "The restaurant")
        limit = min(until, self._previous_until)
        while agreed > 0 and new[agreed - 1].end > limit:
            agreed -= 1
        self._previous_until = until
        done = new[:agreed]
        self.committed += done
        self._previous = new[agreed:]
        return done

    def tentative(self) -> list[Word]:
        """The words after the committed ones in the latest decode (a draft)."""
        return list(self._previous)

    def finish(self) -> list[Word]:
        """The audio ended: the latest decode's tail is committed as it is."""
        done, self._previous = self._previous, []
        self.committed += done
        return done

    def drop_after(self, seconds: float) -> int:
        """The utterance ends at ``seconds``: words heard mostly after it (their middle is
        after it; a recogniser often runs a word's end on into the pause) are not part of
        it, committed ones included: the next utterance hears them. How many were dropped."""
        keep = [w for w in self.committed if before(w, seconds)]
        dropped = len(self.committed) - len(keep)
        self.committed = keep
        self._previous = [w for w in self._previous if before(w, seconds)]
        return dropped

    def _after_committed(self, hypothesis: list[Word]) -> list[Word]:
        """The decode without the words it repeats of what is committed already."""
        end = self.committed_end
        if self.boundary is not None:  # words heard in the context are the previous utterance's
            boundary = self.boundary
            hypothesis = [w for w in hypothesis if not before(w, boundary)]
        words = [w for w in hypothesis if w.end > end - OVERLAP_SECONDS or not self.committed]
        if not self.committed or not words:
            return [w for w in words if norm(w.text)]
        # the decode's first words that begin before the committed end may be committed words
        # heard again (decode times are approximate): the longest such run that repeats the
        # last committed words is skipped
        slack = REPEAT_SLACK if self.boundary is not None and end <= self.boundary else 0.0
        early = 0
        while early < min(len(words), MAX_REPEAT) and words[early].start < end + slack:
            early += 1
        tail = [norm(w.text) for w in self.committed[-MAX_REPEAT:]]
        head = [norm(w.text) for w in words[:early]]
        for k in range(min(len(tail), len(head)), 0, -1):
            if tail[-k:] == head[:k]:
                words = words[k:]
                break
        else:
            # the last committed word heard whole now ("rest" -> "restaurant"): it is that
            # word, not one more (the committed text does not change)
            first = norm(words[0].text) if words else ""
            if early and first and (first.startswith(tail[-1]) or tail[-1].startswith(first)):
                words = words[1:]
        return [w for w in words if norm(w.text)]


def before(word: Word, seconds: float) -> bool:
    """The word was heard before ``seconds`` (its middle is)."""
    return (word.start + word.end) / 2 <= seconds


def text_of(words: list[Word]) -> str:
    return " ".join(w.text.strip() for w in words if w.text.strip())
