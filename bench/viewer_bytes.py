"""What a viewer's phone receives: bytes per minute of speech, reading and listening.

    python bench/viewer_bytes.py [--sentences 12] [--json]

Starts a real scheduler and a real node (default offline engines: Whisper, Apertium,
Piper) as processes on loopback. A speaker streams the monologue of
``bench/monologue.py`` (eSpeak NG sentences with 0.25 s gaps, 20 ms chunks at the pace
of speech, server-side end of speech, translated speech on) while two viewers follow the
session's event stream (Server-Sent Events) from its start:

* a **reader** (``…/events/stream?token=…``): subtitles, drafts and heartbeats, no speech;
* a **listener** (``…&audio=1``): the same, with each result's translated speech.

Prints, for each, the bytes received over the wire (HTTP body, as the phone's radio
carries it before any compression), per minute of speech, and the events by type. The
speaker's own socket is counted the same way for comparison. Bounded: one pass over the
script; the processes are stopped at the end whatever happens. Traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench.monologue import SCRIPT, default_node, espeak, paced
from linguamesh import protocol as p
from linguamesh.client import SessionClient


@dataclass
class Tally:
    bytes: int = 0
    events: Counter[str] = field(default_factory=Counter)
    results: int = 0


async def follow(url: str, tally: Tally, stop: asyncio.Event) -> None:
    """Read the event stream until ``stop``: every byte, and each frame's event type."""
    async with httpx.AsyncClient(timeout=None) as http, http.stream("GET", url) as res:
        res.raise_for_status()
        rest = ""
        async for chunk in res.aiter_raw():
            tally.bytes += len(chunk)
            rest += chunk.decode("utf-8", "replace")
            *frames, rest = rest.split("\n\n")
            for frame in frames:
                kind = "message"
                for line in frame.splitlines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and '"type"' in line:
                        try:
                            kind = json.loads(line[5:]).get("type", kind)
                        except ValueError:
                            pass
                tally.events[kind] += 1
                tally.results += kind == "translation_result"
            if stop.is_set():
                return


async def run(ws: str, audio: bytes) -> dict[str, object]:
    reader, listener, speaker = Tally(), Tally(), Tally()
    stop = asyncio.Event()
    async with SessionClient(ws, src="en", tgt="es", tts=True, end_of_speech="server") as c:
        assert c.ack is not None
        base = f"{ws.replace('ws', 'http', 1)}/api/v1/sessions/{c.session_id}/events/stream?token={c.ack.view_token}"
        viewers = [
            asyncio.create_task(follow(base, reader, stop)),
            asyncio.create_task(follow(base + "&audio=1", listener, stop)),
        ]
        await asyncio.sleep(0.5)  # (both streams open)

        async def receive() -> None:
            while True:
                ev = await c.recv()
                speaker.bytes += len(p.encode(ev))
                speaker.events[str(ev.__struct_config__.tag)] += 1
                speaker.results += isinstance(ev, p.TranslationResult)

        rx = asyncio.create_task(receive())
        await paced(c, audio)
        deadline, last = time.monotonic() + 60, -1
        while time.monotonic() < deadline and speaker.results != last:  # until none came for 5 s
            last = speaker.results
            await asyncio.sleep(5)
        await asyncio.sleep(1)
        stop.set()
        rx.cancel()
        for v in viewers:
            v.cancel()
    minutes = len(audio) / 32000 / 60
    return {
        "speech_s": round(len(audio) / 32000, 1),
        **{
            name: {
                "bytes": t.bytes,
                "kB_per_minute": round(t.bytes / minutes / 1000, 1),
                "results": t.results,
                "events": dict(t.events.most_common()),
            }
            for name, t in (("reader", reader), ("listener", listener), ("speaker_socket", speaker))
        },
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sentences = [espeak(text) for text, _ in SCRIPT[: args.sentences]]
    gap = b"\0\0" * 4000  # 0.25 s
    audio = b"\0\0" * 8000 + gap.join(sentences) + b"\0\0" * 32000
    async with default_node("lm-viewer-bytes-") as ws:
        print(
            f"viewer bytes: {len(sentences)} sentences, {len(audio) / 32000:.1f} s of speech", file=sys.stderr
        )
        figures = await run(ws, audio)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"speech: {figures['speech_s']} s")
    for name in ("reader", "listener", "speaker_socket"):
        f = figures[name]
        assert isinstance(f, dict)
        print(f"{name:15} {f['kB_per_minute']:8.1f} kB/min  ({f['bytes']} bytes, {f['results']} results)")
        print(f"{'':15} {f['events']}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
