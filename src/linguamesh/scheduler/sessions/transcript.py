"""A session's transcript as subtitles (SRT, WebVTT) or plain text. Pure.

Built from the session's ``translation_result`` events: one cue per utterance with a
result, in utterance order. ``lang`` picks the text: the source language gives the
transcripts (``text_asr``), a target language its translations. Times are the
utterance's own: when it was spoken (``spoken_at``, our addition to the result) and
for how long (``audio_seconds``), counted from the first utterance of the transcript.
Results without times (from before they were recorded) follow each other.

Subtitles (SRT, WebVTT) follow subtitle norms: an utterance longer than two lines of 42
characters, or than 7 seconds, becomes several cues. Plain text has a header (whose,
when, which languages) and each line's time. A room's transcript (the whole event: every
session that showed in it) is the sessions' cues one after the other on one clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Format = Literal["srt", "vtt", "txt"]
FORMATS: tuple[Format, ...] = ("srt", "vtt", "txt")
MEDIA_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt", "txt": "text/plain"}


@dataclass(frozen=True, slots=True)
class Cue:
    index: int
    start: float
    end: float
    text: str
    #: the cue's place among those of its utterance (a long one is cut to subtitle norms)
    part: int = 0


def cues(results: list[dict[str, Any]], lang: str, src_lang: str, origin: float | None = None) -> list[Cue]:
    """The cues of ``lang`` from ``translation_result`` events (dicts as sent). Times count
    from ``origin`` (epoch seconds; default: the first utterance spoken)."""
    source = lang == src_lang
    chosen: dict[int, dict[str, Any]] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        if not source and r.get("tgt_lang") != lang:
            continue
        chosen.setdefault(int(r["utterance_index"]), r)  # one per utterance (any target for the source)
    out: list[Cue] = []
    clock = 0.0
    for index in sorted(chosen):
        r = chosen[index]
        text = " ".join(str(r.get("text_asr" if source else "text_translated") or "").split())
        seconds = float(r.get("audio_seconds") or 0.0) or 1.0
        spoken = r.get("spoken_at")
        if spoken is not None:
            origin = float(spoken) if origin is None else origin
            start = max(clock, float(spoken) - origin)
        else:
            start = clock
        end = start + seconds
        clock = end
        if text:
            out.append(Cue(index, start, end, text))
    return out


def event_name(title: str, presenter: str) -> str:
    """The event as its speaker named it ("title — presenter"; "" when not named)."""
    return " — ".join(x for x in (title, presenter) if x)


def languages(src_lang: str, tgt_langs: list[str], results: list[dict[str, Any]]) -> list[str]:
    """A session's transcript languages: its own, and those its listeners had it
    translated into (found in its results)."""
    return list(dict.fromkeys([src_lang, *tgt_langs, *(str(r.get("tgt_lang") or "") for r in results)]))


def first_spoken(results: list[dict[str, Any]]) -> float | None:
    """When the first utterance of these results was spoken (epoch seconds)."""
    times = [float(r["spoken_at"]) for r in results if r.get("spoken_at") is not None]
    return min(times) if times else None


#: Subtitle norms: two lines of at most 42 characters, at most 7 seconds on screen.
LINE_CHARS = 42
CUE_LINES = 2
CUE_SECONDS = 7.0


def subtitles(items: list[Cue]) -> list[Cue]:
    """The cues cut to subtitle norms: a long utterance becomes several cues, its time
    shared by their length in characters, each at most two lines of 42 characters (a word
    longer than a line stays whole) and, where the speech allows, 7 seconds."""
    out: list[Cue] = []
    for c in items:
        words = c.text.split()
        size = len(c.text)
        pieces = max(
            1, math.ceil(size / (LINE_CHARS * CUE_LINES)), math.ceil((c.end - c.start) / CUE_SECONDS)
        )
        pieces = min(pieces, len(words))
        target = size / pieces
        groups: list[list[str]] = [[]]
        length = 0
        for w in words:
            grown = length + len(w) + (1 if groups[-1] else 0)
            if (
                groups[-1]
                and (grown > target * 1.15 or grown > LINE_CHARS * CUE_LINES)
                and len(groups) < pieces
            ):
                groups.append([])
                grown = len(w)
            groups[-1].append(w)
            length = grown
        groups = _fit(groups)
        at = c.start
        per_char = (c.end - c.start) / max(1, sum(len(" ".join(g)) for g in groups))
        for part, g in enumerate(groups):
            text = " ".join(g)
            end = at + per_char * len(text)
            out.append(Cue(c.index, at, end, _lines(text), part))
            at = end
    return out


def _fit(groups: list[list[str]]) -> list[list[str]]:
    """Groups longer than two lines split again (a run of long words)."""
    out: list[list[str]] = []
    for g in groups:
        cur: list[str] = []
        for w in g:
            if cur and len(" ".join([*cur, w])) > LINE_CHARS * CUE_LINES:
                out.append(cur)
                cur = []
            cur.append(w)
        if cur:
            out.append(cur)
    return out


def _lines(text: str) -> str:
    """One line, or two balanced lines of at most 42 characters each where that fits."""
    if len(text) <= LINE_CHARS:
        return text
    words = text.split()
    best: tuple[int, str] | None = None
    for i in range(1, len(words)):
        a, b = " ".join(words[:i]), " ".join(words[i:])
        over = max(len(a), len(b)) - LINE_CHARS
        score = abs(len(a) - len(b)) + (1000 * over if over > 0 else 0)
        if best is None or score < best[0]:
            best = (score, f"{a}\n{b}")
    return best[1] if best is not None else text


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


@dataclass(frozen=True, slots=True)
class Header:
    """What a plain-text transcript says first: whose, when, which languages."""

    title: str
    started_at: float | None
    src_lang: str
    lang: str


def render(items: list[Cue], fmt: Format, header: Header | None = None) -> str:
    if fmt == "txt":
        return _text(items, header)
    items = subtitles(items)
    if fmt == "srt":
        return "\n".join(
            f"{n}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n{c.text}\n"
            for n, c in enumerate(items, 1)
        )
    body = "\n".join(
        f"{_cue_id(c)}\n{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n{_vtt_text(c.text)}\n" for c in items
    )
    return "WEBVTT\n\n" + body


def _text(items: list[Cue], header: Header | None) -> str:
    """Plain text: a header, then one line per utterance with its time ``[hh:mm:ss]``."""
    lines = []
    if header is not None:
        what = "transcript" if header.lang == header.src_lang else f"translation from {header.src_lang}"
        lines.append(f"{header.title}: {what}, in {header.lang}")
        if header.started_at is not None:
            started = datetime.fromtimestamp(header.started_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            lines.append(f"Started {started}")
        lines.append("")
    lines += [f"[{_stamp(c.start, ',')[:8]}] {c.text}" for c in items]
    return "".join(f"{line}\n" for line in lines)


def _cue_id(c: Cue) -> str:
    """A WebVTT cue's identifier: its utterance's index, and ``-2``, ``-3`` … for the further
    cues of a long utterance."""
    return str(c.index) if c.part == 0 else f"{c.index}-{c.part + 1}"


def _vtt_text(text: str) -> str:
    """Cue text cannot hold "-->" or a blank line; & and < are escaped."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace("-->", "→")
    return "\n".join(" ".join(line.split()) for line in text.splitlines())
