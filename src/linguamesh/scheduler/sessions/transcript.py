"""A session's transcript as subtitles (SRT, WebVTT) or plain text. Pure.

Built from the session's ``translation_result`` events: one cue per utterance with a
result, in utterance order. ``lang`` picks the text: the source language gives the
transcripts (``text_asr``), a target language its translations. Times are the
utterance's own: when it was spoken (``spoken_at``, our addition to the result) and
for how long (``audio_seconds``), counted from the first utterance of the transcript.
Results without times (from before they were recorded) follow each other.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def cues(results: list[dict[str, Any]], lang: str, src_lang: str) -> list[Cue]:
    """The cues of ``lang`` from ``translation_result`` events (dicts as sent)."""
    source = lang == src_lang
    chosen: dict[int, dict[str, Any]] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        if not source and r.get("tgt_lang") != lang:
            continue
        chosen.setdefault(int(r["utterance_index"]), r)  # one per utterance (any target for the source)
    out: list[Cue] = []
    origin: float | None = None
    clock = 0.0
    for index in sorted(chosen):
        r = chosen[index]
        text = str(r.get("text_asr" if source else "text_translated") or "").strip()
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


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(items: list[Cue], fmt: Format) -> str:
    if fmt == "txt":
        return "".join(f"{c.text}\n" for c in items)
    if fmt == "srt":
        return "\n".join(
            f"{n}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n{' '.join(c.text.split())}\n"
            for n, c in enumerate(items, 1)
        )
    body = "\n".join(
        f"{c.index}\n{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n{_vtt_text(c.text)}\n" for c in items
    )
    return "WEBVTT\n\n" + body


def _vtt_text(text: str) -> str:
    """Cue text cannot hold "-->" or a blank line; & and < are escaped."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace("-->", "→")
    return " ".join(text.split())
