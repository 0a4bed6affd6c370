"""Openings benchmark: are the first words of an utterance right?

    python bench/openings.py [--silence 0.8] [--json]

A streaming recogniser commits words two decodes agree on; a decode of the first second
of speech guesses, and a committed word is never taken back, so a wrong first word
("Don't" for "Good morning") stays in the final. Starts a real scheduler and node
(default offline engines) on loopback and streams twenty openings (eSpeak NG), each
after ``--silence`` seconds of silence, as 20 ms ``audio_chunk``s in real time, one
session each. Prints, per opening, whether the first two words of the result are the
script's, and the share right — streamed, and sent whole (one ``utterance``: the
recogniser's own score, the baseline); and the first live caption's delay after speech
start.
Bounded: one pass; the processes are stopped at the end. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench.monologue import default_node, espeak, paced
from linguamesh import protocol as p
from linguamesh.client import SessionClient

OPENINGS = [
    "Good morning everyone, let us begin with the news.",
    "Hello and welcome to our weekly meeting.",
    "Today we are going to talk about the budget.",
    "Thank you all for coming this afternoon.",
    "First of all, I want to introduce our new colleague.",
    "Good afternoon, can everybody hear me?",
    "Let me start with a short summary of last week.",
    "Welcome back after the holidays.",
    "This morning the train was late again.",
    "Before we start, please switch off your phones.",
    "Hi everyone, thanks for joining the call.",
    "Okay, so let us get started.",
    "Yesterday I visited the new library downtown.",
    "Ladies and gentlemen, welcome to the conference.",
    "So the first question is about the schedule.",
    "Morning all, I hope you had a good weekend.",
    "Right, shall we begin?",
    "Hey team, quick update on the project.",
    "Last year our sales grew by ten percent.",
    "Please take your seats, we are about to start.",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


async def one(url: str, text: str, silence: float) -> tuple[str, float | None]:
    audio = b"\0\0" * int(silence * 16000) + espeak(text) + b"\0\0" * 16000
    async with SessionClient(url, src="en", tgt="es", tts=False, end_of_speech="server") as c:
        first: float | None = None
        result = ""
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        player = asyncio.create_task(paced(c, audio))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ev = await c.recv(timeout=deadline - time.monotonic())
            if isinstance(ev, p.AsrPartial) and first is None and ev.text.strip():
                first = loop.time() - t0 - silence
            elif isinstance(ev, p.TranslationResult):
                result = ev.text_asr
                break
        player.cancel()
        return result, first


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--silence", type=float, default=0.8, help="seconds of silence before the speech")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    async with (
        default_node("lm-openings-") as url,
        SessionClient(url, src="en", tgt="es", tts=False) as whole,
    ):
        for i, text in enumerate(OPENINGS):
            got, first = await one(url, text, args.silence)
            right = words(got)[:2] == words(text)[:2]
            await whole.send_utterance(i, espeak(text))
            alone = (await whole.next_result(120)).text_asr
            rows.append({"script": text, "result": got, "first_two_right": right, "first_caption_s": first,
                         "whole": alone, "whole_first_two_right": words(alone)[:2] == words(text)[:2]})  # fmt: skip
            print(f"{'ok ' if right else 'BAD'} {got!r}   (whole: {alone!r})", file=sys.stderr)
    captions = [r["first_caption_s"] for r in rows if r["first_caption_s"] is not None]
    figures = {
        "openings": len(rows),
        "first_two_words_right": sum(1 for r in rows if r["first_two_right"]),
        "whole_first_two_words_right": sum(1 for r in rows if r["whole_first_two_right"]),
        "first_caption_s_median": round(statistics.median(captions), 2) if captions else None,
        "first_caption_s_max": round(max(captions), 2) if captions else None,
    }
    print(
        json.dumps({**figures, "rows": rows}, indent=2)
        if args.json
        else "\n".join(f"{k:26} {v}" for k, v in figures.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
