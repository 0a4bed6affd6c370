"""Where a streamed utterance ends when the speaker does not pause: after a sentence. Pure.

Fluent speech has short gaps between sentences (a quarter of a second), far below a
pause that ends speech (``end_of_speech_ms``), so without this an utterance would run to
the length limit and be cut there, mid-sentence. The streaming node knows better: its
committed words carry punctuation and times. Once a committed word ends a sentence and
a pause follows it, the node proposes to end the utterance in that pause; the scheduler
decides, as for any end of speech, and the audio after the cut starts the next utterance.
The pause is the VAD's (silent frames around the word's end: Whisper's word times run a
word on to the next one and are off by a tenth of a second or two); without a VAD, the
gap between the word and the next.

The cut goes after the *last* committed sentence: every sentence the node reported
(translated, spoken) is before it, and what is committed after it (the start of the next
sentence) is dropped from this utterance and heard again in the next one — so nothing
is transcribed twice and nothing is lost. A speaker who never ends a sentence is cut
after ``soft_max`` seconds at the best word boundary (a comma first, else the longest gap).
"""

from __future__ import annotations

from dataclasses import dataclass

from .agreement import Word

SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
CLAUSE_END = (",", ";", ":", "，", "；")
#: Words ending with a period that do not end a sentence.
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e", "no"}
)


@dataclass(frozen=True, slots=True)
class Cut:
    """End the utterance at ``seconds``: after a ``sentence``, or at a word boundary once
    it is too long (``length``)."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class SentencePolicy:
    #: an utterance shorter than this is not cut (a cut costs a new job)
    min_seconds: float = 1.5
    #: the gap after a sentence that makes it a place to cut
    min_gap: float = 0.12
    #: seconds of audio after which an utterance with no sentence end is cut anyway
    soft_max: float = 10.0
    #: how far into the gap the cut goes (at most; half the gap when it is shorter)
    margin: float = 0.2


def ends_sentence(word: str) -> bool:
    text = word.rstrip("\"'»”)]")
    if not text.endswith(SENTENCE_END):
        return False
    if text.endswith(".") and text[:-1].lower().lstrip("(\"'«“") in ABBREVIATIONS:
        return False
    return not (text.endswith(".") and len(text) > 1 and text[-2].isdigit() and "." in text[:-1])


#: How far from a word's end (Whisper's time) a pause of the VAD may be and still be the one after it.
SLACK = 0.3


def _near(
    pauses: list[tuple[float, float]], word: Word, until: float, heard: float
) -> list[tuple[float, float]]:
    """The VAD's silences (heard whole) at the boundary after ``word``: around its end and
    before the next word starts (``until``), give or take ``SLACK``."""
    return [(a, b) for a, b in pauses if b >= word.end - SLACK and a <= until + SLACK and b <= heard]


def _cut_after(
    word: Word,
    following: Word | None,
    heard: float,
    policy: SentencePolicy,
    pauses: list[tuple[float, float]] | None,
) -> float | None:
    """The cut in the pause after ``word``, or None when there is none (yet)."""
    until = following.start if following is not None else heard
    if pauses is not None:  # the VAD's silences: the one nearest the word's end
        near = [(a, b) for a, b in _near(pauses, word, until, heard) if b - a >= policy.min_gap]
        if not near:
            return None
        a, b = min(near, key=lambda p: abs((p[0] + p[1]) / 2 - word.end))
        return (a + b) / 2
    gap = until - word.end
    if gap < policy.min_gap:
        return None
    return word.end + min(gap / 2, policy.margin)


def sentence_cut(
    committed: list[Word],
    tentative: list[Word],
    heard: float,
    policy: SentencePolicy = SentencePolicy(),
    pauses: list[tuple[float, float]] | None = None,
) -> Cut | None:
    """Where to end the utterance whose committed words (times from its start) are
    ``committed``, with ``tentative`` words after them and ``heard`` seconds of audio;
    ``pauses``: the VAD's silences (start, end) in that audio, when there is a VAD. None
    to go on."""
    words = committed + tentative
    last = max((i for i, w in enumerate(committed) if ends_sentence(w.text)), default=None)
    if last is not None and committed[last].end >= policy.min_seconds:
        following = words[last + 1] if last + 1 < len(words) else None
        at = _cut_after(committed[last], following, heard, policy, pauses)
        if at is not None:
            return Cut(at, "sentence")
        return None  # the speaker ran on: wait for the next sentence (or the length bound)
    if heard < policy.soft_max:
        return None
    # too long without a sentence end: the best boundary between committed words after the
    # last sentence (a clause end first, then the longest gap)
    start = 0 if last is None else last + 1
    best: tuple[int, float, float] | None = None
    for i in range(start, len(committed)):
        w = committed[i]
        if w.end < policy.min_seconds:
            continue
        following = words[i + 1] if i + 1 < len(words) else None
        until = following.start if following is not None else heard
        gap, at = until - w.end, w.end + max(0.0, min((until - w.end) / 2, policy.margin))
        if pauses is not None:  # the longest silence of the VAD at this boundary, if any
            near = _near(pauses, w, until, heard)
            if near:
                a, b = max(near, key=lambda p: p[1] - p[0])
                gap, at = b - a, (a + b) / 2
        key = (1 if w.text.rstrip().endswith(CLAUSE_END) else 0, gap)
        if best is None or key > best[:2]:
            best = (key[0], gap, at)
    if best is None:
        return None
    # never inside a committed word (a pause found near the boundary may be a wrong one)
    at = best[2]
    inside = next((w for w in committed if w.start < at < w.end), None)
    return Cut(inside.end if inside is not None else at, "length")
