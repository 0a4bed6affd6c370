"""Monologue benchmark: fluent speech with short gaps, streamed in real time.

    python bench/monologue.py [--sentences 12] [--gap 0.25] [--json]

Starts a real scheduler and a real node (default offline engines) as processes on
loopback and plays a lecture — sentences synthesised by eSpeak NG, joined by short
gaps (0.25 s: a speaker who does not pause) — as 20 ms ``audio_chunk``s at the pace of
speech, with server-side end of speech, then two seconds of silence. Prints:

* the results: how many, the audio each covers (``audio_seconds``: min, median, max);
* per sentence, how many results hold it (half of its words of more than three letters):
  **duplicated** (more than one) and **lost** (none, while the sentence sent whole is
  heard: lost at a cut); **misheard**: none, and not heard when sent whole either (the
  recogniser's own error, not the cut's);
* WER of the results joined against the script, and of the same sentences sent whole
  (``utterance``, one each) — the baseline;
* the first live caption and the first result, in seconds after speech started;
* the transcript's SRT cues: longest, and the most characters in one.

Bounded: one pass over the script; the processes are stopped at the end whatever
happens. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from linguamesh import protocol as p
from linguamesh.audio import to_float32
from linguamesh.client import SessionClient
from linguamesh.quality import corpus_wer
from tests.conftest import free_port
from tests.procs import launch, wait_ready

#: A lecture: each sentence has two words no other sentence has (how it is found in results).
SCRIPT = [
    ("Welcome to the second lecture on the history of our city.", ("welcome", "lecture")),
    ("The harbour was built by fishermen almost four hundred years ago.", ("harbour", "fishermen")),
    ("Wooden ships carried cotton and sugar across the ocean.", ("wooden", "cotton")),
    ("After the railway arrived the town grew very quickly.", ("railway", "quickly")),
    ("Many families moved here from the countryside to find work.", ("families", "countryside")),
    ("The old library opened its doors to everyone in the spring.", ("library", "spring")),
    ("During the war the factories made uniforms and boots.", ("factories", "uniforms")),
    ("Later the university brought students from many countries.", ("university", "students")),
    ("Remember that the essay is due on Friday afternoon.", ("essay", "friday")),
    ("Please read the chapter about bridges before the next class.", ("chapter", "bridges")),
    ("We will also visit the museum near the river next month.", ("museum", "river")),
    ("Thank you for listening and see you next week.", ("listening", "week")),
]
CHUNK = 640  # 20 ms of 16 kHz pcm16


def espeak(text: str) -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "165", "--stdout", text], capture_output=True, check=True
    ).stdout
    return (np.clip(to_float32(wav, "wav", 0, 16000), -1, 1) * 32767).astype("<i2").tobytes()


def content(text: str) -> set[str]:
    """The words of more than three letters, without a plural's s ("ship" for "ships")."""
    return {w.removesuffix("s") for w in re.findall(r"[a-z']+", text.lower()) if len(w) > 3}


def holds(sentence: str, text: str) -> bool:
    """A result holds a sentence when it has at least half of the sentence's words of more
    than three letters (a misrecognised word or two do not hide it: "World and ship is
    carried car and shoulder across the ocean" holds "Wooden ships carried cotton and sugar
    across the ocean": the recogniser misheard it, the cut did not lose it)."""
    mine = content(sentence)
    return len(mine & content(text)) * 2 >= len(mine)


async def paced(c: SessionClient, audio: bytes, seq: int = 0) -> int:
    """``audio`` as 20 ms ``audio_chunk``s at the pace of speech, from ``seq``; the next seq
    (the benches that stream share it)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, at in enumerate(range(0, len(audio), CHUNK)):
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - loop.time()))
        await c.send_chunk(seq, audio[at : at + CHUNK])
        seq += 1
    return seq


async def stream(url: str, audio: bytes) -> dict[str, object]:
    results: list[tuple[float, p.TranslationResult]] = []
    first_caption: float | None = None
    async with SessionClient(url, src="en", tgt="es", tts=False, end_of_speech="server") as c:
        start = time.monotonic()

        async def receive() -> None:
            nonlocal first_caption
            while True:
                ev = await c.recv()
                now = time.monotonic() - start
                if isinstance(ev, p.AsrPartial) and first_caption is None and ev.text.strip():
                    first_caption = now
                elif isinstance(ev, p.TranslationResult):
                    results.append((now, ev))

        rx = asyncio.create_task(receive())
        await paced(c, audio)
        spoken = time.monotonic() - start
        deadline = time.monotonic() + 60
        last = len(results)
        while time.monotonic() < deadline:  # until no result came for 5 s
            await asyncio.sleep(5)
            if len(results) == last:
                break
            last = len(results)
        rx.cancel()
        async with httpx.AsyncClient() as http:
            srt = (
                await http.get(
                    url.replace("ws", "http") + f"/api/v1/sessions/{c.session_id}/transcript",
                    params={"format": "srt", "lang": "en", "token": c.ack.view_token if c.ack else ""},
                )
            ).text
    return {"results": results, "first_caption": first_caption, "spoken": spoken, "srt": srt}


async def whole(url: str, sentences: list[bytes]) -> list[str]:
    out = []
    async with SessionClient(url, src="en", tgt="es", tts=False) as c:
        for i, audio in enumerate(sentences):
            await c.send_utterance(i, audio)
            out.append((await c.next_result(120)).text_asr)
    return out


@asynccontextmanager
async def default_node(
    prefix: str, engines: list[dict[str, object]] | None = None, slots: int = 2, log: Path | None = None
) -> AsyncIterator[str]:
    """A scheduler and a node with the default offline engines (``slots`` job slots; with
    ``engines``, those instead) as processes on loopback, not under coverage; the
    scheduler's ws:// URL once the node is registered. With ``log``, the node's JSON
    records (info) go there. Both are stopped at the end, whatever happens
    (``bench/openings.py`` and ``bench/targets.py`` use it too)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    sched = launch("scheduler", "--port", str(port), "--result-timeout", "120", measure=False)
    cfg = tmp / "node.toml"
    text = f'node_id = "bench-node"\nmax_concurrent_jobs = {slots}\n'
    for engine in engines or []:  # (JSON's strings, numbers, booleans and lists are TOML's)
        text += "[[engines]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in engine.items())
    cfg.write_text(text)
    flags = ["--log", "info"] if log is not None else []
    node = launch(
        "node", "--scheduler", f"ws://127.0.0.1:{port}", "--config", str(cfg), *flags, log=log, measure=False
    )
    try:
        await wait_ready(port, sched)
        async with httpx.AsyncClient() as http:
            for _ in range(600):  # the models load first
                if (await http.get(f"http://127.0.0.1:{port}/api/v1/nodes")).json()["nodes"]:
                    break
                await asyncio.sleep(0.1)
        yield f"ws://127.0.0.1:{port}"
    finally:
        for proc in (node, sched):
            proc.stop()


def cues(srt_text: str) -> list[tuple[float, int]]:
    import srt

    return [
        ((c.end - c.start).total_seconds(), max(len(x) for x in c.content.splitlines() or [""]))
        for c in srt.parse(srt_text)
    ]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=12)
    ap.add_argument("--gap", type=float, default=0.25, help="silence between sentences, seconds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    script = SCRIPT[: args.sentences]
    sentences = [espeak(text) for text, _ in script]
    gap = b"\0\0" * int(args.gap * 16000)
    audio = b"\0\0" * 8000 + gap.join(sentences) + b"\0\0" * 32000  # 0.5 s before, 2 s after
    async with default_node("lm-monologue-") as url:
        print(
            f"monologue: {len(script)} sentences, {len(audio) / 32000:.1f} s, gaps {args.gap} s",
            file=sys.stderr,
        )
        run = await stream(url, audio)
        baseline = await whole(url, sentences)
    results = [r for _, r in sorted(run["results"], key=lambda x: x[1].utterance_index)]  # type: ignore[index]
    texts = [r.text_asr for r in results]
    counts = [sum(holds(sentence, t) for t in texts) for sentence, _ in script]
    heard = [holds(sentence, alone) for (sentence, _), alone in zip(script, baseline, strict=True)]
    lengths = [r.audio_seconds or 0.0 for r in results]
    ref = [text for text, _ in script]
    figures = {
        "results": len(results),
        "audio_seconds": {
            "min": min(lengths, default=0),
            "median": statistics.median(lengths) if lengths else 0,
            "max": max(lengths, default=0),
        },
        "lengths": [round(x, 1) for x in lengths],
        "duplicated_sentences": sum(1 for n in counts if n > 1),
        "lost_sentences": sum(1 for n, h in zip(counts, heard, strict=True) if n == 0 and h),
        "misheard_sentences": sum(1 for n, h in zip(counts, heard, strict=True) if n == 0 and not h),
        "wer_streamed": round(corpus_wer([(" ".join(ref), " ".join(texts))]), 4),
        "wer_whole": round(corpus_wer(list(zip(ref, baseline, strict=True))), 4),
        "first_caption_s": run["first_caption"],
        "first_result_s": min((t for t, _ in run["results"]), default=None),  # type: ignore[union-attr]
        "speech_s": round(len(audio) / 32000, 1),
        "srt_longest_cue_s": max((d for d, _ in cues(str(run["srt"]))), default=0),
        "srt_most_chars_per_line": max((n for _, n in cues(str(run["srt"]))), default=0),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for k, v in figures.items():
            print(f"{k:28} {v}")
        for (text, _), n, h, alone in zip(script, counts, heard, baseline, strict=True):
            if n != 1:
                what = f"{n}x" if n else "LOST" if h else "MISHEARD"
                print(f"  {what}: {text}  (sent whole: {alone})")
        print("results:")
        for r in results:
            print(f"  {r.utterance_index:3} {r.audio_seconds or 0:5.1f} s  {r.text_asr}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
