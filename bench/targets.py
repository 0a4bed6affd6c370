"""Targets benchmark: what one utterance costs with one and with four target languages.

    python bench/targets.py [--utterances 6] [--streaming] [--json]

Starts a real scheduler and node (processes on loopback) with the default offline
engines — Whisper base for ASR, Apertium en->es, Piper and eSpeak NG for speech — plus
the test engine set for MT into fr, de and it (no offline MT model for them ships in a
package; it returns the text tagged with the language, at once). Sends eSpeak
sentences as whole ``utterance``s, one at a time, to a session with one target (es) and
to one with four (es, fr, de, it) — with ``--streaming``, each sentence is streamed
instead, as 20 ms ``audio_chunk``s at the pace of speech with 0.3 s of silence around
it, then the end of the utterance (the speaker page's path) — and prints per run:

* ASR runs per utterance on the node and their time (from the node's ``stage.done``
  records: a job that took a sibling's transcript is not a run);
* the ASR time per utterance (all its runs) and the time from sending an utterance (a
  streamed one: its end) to its last result.

Bounded: one pass; the processes are stopped at the end. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench.monologue import SCRIPT, default_node, espeak, paced
from linguamesh.client import SessionClient
from linguamesh.node.defaults import default_engines

MORE = {
    "kind": "test",
    "languages": ["en", "fr", "de", "it"],
    "tts": False,
    "repair": False,
    "partials": False,
}


def asr_records(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "stage.done" and rec.get("stage") == "asr":
            out.append(rec)
    return out


async def speak(c: SessionClient, seq: int, audio: bytes) -> int:
    """``audio`` with silence around it as 20 ms chunks at the pace of speech, then the
    utterance's end; the next chunk's seq."""
    seq = await paced(c, b"\0\0" * 4800 + audio + b"\0\0" * 4800, seq)
    await c.send_chunk(seq, b"", is_final=True)
    return seq + 1


async def run(
    url: str, log: Path, targets: list[str], sentences: list[bytes], streaming: bool = False
) -> dict[str, object]:
    seen = len(asr_records(log))
    walls = []
    seq = 0
    async with SessionClient(url, src="en", tgt=targets[0], extra_tgt_langs=targets[1:], tts=True) as c:
        for i, audio in enumerate(sentences):
            if streaming:
                seq = await speak(c, seq, audio)
                t0 = time.perf_counter()
            else:
                t0 = time.perf_counter()
                await c.send_utterance(i, audio)
            results = await c.results(len(targets), 120)
            walls.append(time.perf_counter() - t0)
            assert sorted(r.tgt_lang for r in results) == sorted(targets), results
            assert all(r.status == "ok" for r in results), [r.error for r in results]
    await asyncio.sleep(0.5)  # the node's last records reach its log
    records = asr_records(log)[seen:]
    runs = [r for r in records if not r.get("from_sibling")]
    n = len(sentences)
    asr_ms = sum(float(r["duration_ms"]) for r in runs)  # type: ignore[arg-type]
    return {
        "targets": len(targets),
        "utterances": n,
        "asr_runs_per_utterance": round(len(runs) / n, 2),
        "asr_ms_per_utterance": round(asr_ms / n, 1),
        "jobs_given_a_siblings_transcript": len(records) - len(runs),
        "utterance_to_last_result_ms_median": round(statistics.median(walls) * 1000, 1),
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=6)
    ap.add_argument("--streaming", action="store_true", help="stream each sentence as it is spoken")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sentences = [espeak(text) for text, _ in SCRIPT[: args.utterances]]
    log = Path(tempfile.mkdtemp(prefix="lm-targets-")) / "node.log"
    rows = []
    async with default_node("lm-targets-", engines=[*default_engines(), MORE], slots=4, log=log) as url:
        await run(url, log, ["es"], sentences[:1], args.streaming)  # warm-up: models loaded, caches filled
        for targets in (["es"], ["es", "fr", "de", "it"]):
            rows.append(await run(url, log, targets, sentences, args.streaming))
            print(f"{len(targets)} target(s): done", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        keys = list(rows[0])
        print(f"{'':36}" + "".join(f"{r['targets']:>12} target(s)" for r in rows))
        for k in keys[1:]:
            print(f"{k:36}" + "".join(f"{r[k]:>22}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
