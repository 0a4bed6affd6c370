"""Transcripts as subtitles (scheduler/transcript.py): pure, checked with the parsers
people use (``srt``, ``webvtt-py``)."""

from __future__ import annotations

import html
import io
import itertools
from datetime import timedelta

import srt
import webvtt

from linguamesh.scheduler.sessions.transcript import (
    CUE_SECONDS,
    LINE_CHARS,
    Cue,
    Header,
    cues,
    render,
    subtitles,
)


def result(
    i: int, asr: str, mt: str, at: float | None, secs: float, tgt: str = "es", ok: bool = True
) -> dict:
    return {"type": "translation_result", "utterance_index": i, "tgt_lang": tgt, "status": "ok" if ok else "failed",
            "text_asr": asr, "text_translated": mt, "spoken_at": at, "audio_seconds": secs}  # fmt: skip


RESULTS = [
    result(1, "Second line --> here.", "Segunda <línea> & más.", 1000.0 + 4.0, 2.5),
    result(0, "First line.", "Primera línea.", 1000.0, 1.5),
    result(2, "", "", 1000.0 + 8.0, 1.0),  # silence: no cue
    result(3, "Failed.", "", 1000.0 + 9.0, 1.0, ok=False),
    result(0, "First line.", "Première ligne.", 1000.0, 1.5, tgt="fr"),
    result(4, "Fourth,\n\nwith a blank line.", "Cuarta.", 3600.0 + 1000.0, 2.0),
]


def test_srt_cues_carry_utterance_times_and_parse() -> None:
    parsed = list(srt.parse(render(cues(RESULTS, "es", "en"), "srt")))
    assert [c.content for c in parsed] == ["Primera línea.", "Segunda <línea> & más.", "Cuarta."]
    assert parsed[0].start == timedelta(0) and parsed[0].end == timedelta(seconds=1.5)
    assert parsed[1].start == timedelta(seconds=4) and parsed[1].end == timedelta(seconds=6.5)
    assert parsed[2].start == timedelta(seconds=3600)  # an hour later


def test_the_source_language_gives_the_transcript_once_per_utterance() -> None:
    parsed = list(srt.parse(render(cues(RESULTS, "en", "en"), "srt")))
    assert [c.content for c in parsed] == [
        "First line.",
        "Second line --> here.",
        "Fourth, with a blank line.",
    ]


def test_webvtt_parses_and_escapes() -> None:
    text = render(cues(RESULTS, "es", "en"), "vtt")
    assert text.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    # players unescape the cue text (webvtt-py hands it over as written)
    assert [html.unescape(c.text) for c in captions] == [
        "Primera línea.",
        "Segunda <línea> & más.",
        "Cuarta.",
    ]
    assert "&lt;línea> &amp;" in captions[1].text
    assert (captions[1].start, captions[1].end) == ("00:00:04.000", "00:00:06.500")
    src = webvtt.from_buffer(io.StringIO(render(cues(RESULTS, "en", "en"), "vtt"))).captions
    assert src[1].text == "Second line → here."  # "-->" cannot be in a cue


def test_plain_text_and_results_without_times() -> None:
    assert render(cues(RESULTS, "fr", "en"), "txt") == "[00:00:00] Première ligne.\n"
    head = Header("LinguaMesh session s-1", 1000.0, "en", "es")
    assert render(cues(RESULTS, "es", "en"), "txt", head).splitlines() == [
        "LinguaMesh session s-1: translation from en, in es",
        "Started 1970-01-01 00:16 UTC",
        "",
        "[00:00:00] Primera línea.",
        "[00:00:04] Segunda <línea> & más.",
        "[01:00:00] Cuarta.",
    ]
    untimed = [result(0, "a", "uno", None, 2.0), result(1, "b", "dos", None, 1.0)]
    items = cues(untimed, "es", "en")
    assert [(c.start, c.end) for c in items] == [(0.0, 2.0), (2.0, 3.0)]  # one after the other
    assert render([], "srt") == "" and render([], "vtt") == "WEBVTT\n\n"


def test_a_long_utterance_becomes_cues_within_subtitle_norms() -> None:
    text = (
        "After the railway arrived the town grew very quickly and many families moved here from the "
        "countryside to find work in the new factories near the harbour, where wooden ships carried cotton."
    )
    (one,) = cues([result(0, text, "x", 1000.0, 14.0)], "en", "en")
    parts = subtitles([one])
    assert len(parts) >= 3
    assert " ".join(" ".join(p.text.split()) for p in parts) == text  # every word, once, in order
    assert parts[0].start == 0.0 and abs(parts[-1].end - 14.0) < 1e-6
    for a, b in itertools.pairwise(parts):
        assert abs(a.end - b.start) < 1e-9  # back to back
    for p in parts:
        lines = p.text.split("\n")
        assert len(lines) <= 2 and all(len(x) <= LINE_CHARS for x in lines), p.text
        assert p.end - p.start <= CUE_SECONDS + 1e-6
    parsed = list(srt.parse(render([one], "srt")))  # and players read it
    assert len(parsed) == len(parts)
    vtt = webvtt.from_buffer(io.StringIO(render([one], "vtt"))).captions
    assert [c.identifier for c in vtt] == ["0", *(f"0-{k}" for k in range(2, len(parts) + 1))]
    assert subtitles([Cue(0, 0.0, 1.0, "Short.")]) == [Cue(0, 0.0, 1.0, "Short.")]
