"""Live captions on two instances: does the instance that holds a session matter?

    python bench/cluster_captions.py [--utterances 8] [--json]

Starts redis-server, scheduler instances A and B on it, and streaming test-engine nodes
(real processes on loopback; per-stage delays like small real engines), then streams
utterances of 1.5 s in 20 ms ``audio_chunk``s at the pace of speech from one session on
A and one on B at the same time, in two layouts:

  nodes on A only   one node, connected to A: B's session is served by relaying its
                    audio to A (``docs/cluster.md``)
  nodes spread      one node on A, one on B

For each layout and instance it prints the time from the first chunk to the first
``asr_partial`` (live captions) and from the end mark to the ``translation_result``
(p50 and p90, ms), and the utterances lost or doubled (must be 0). Bounded: a fixed
number of utterances; traffic stays on 127.0.0.1; the processes stop at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from linguamesh import protocol as p  # noqa: E402
from linguamesh.client import SessionClient  # noqa: E402
from tests.conftest import pcm  # noqa: E402
from tests.fleet import Fleet  # noqa: E402

CHUNK = 0.02
SECONDS = 1.5
ENGINE = "asr_delay_ms = 120\nnmt_delay_ms = 40\ntts_delay_ms = 60\n"


async def session(url: str, utterances: int) -> dict[str, list[float]]:
    """One session streaming ``utterances`` in real time: its latencies, lost and doubled."""
    first_partial: list[float] = []
    end_to_result: list[float] = []
    results: dict[int, int] = {}
    async with SessionClient(url, src="en", tgt="es") as c:
        seq = 0
        for index in range(utterances):
            started = time.monotonic()
            partial_at: float | None = None
            pending = asyncio.ensure_future(c.recv(None))
            for _ in range(round(SECONDS / CHUNK)):
                await c.send_chunk(seq, pcm(CHUNK))
                seq += 1
                await asyncio.sleep(CHUNK)
                while pending.done():
                    ev = pending.result()
                    if isinstance(ev, p.AsrPartial) and ev.utterance_index == index and partial_at is None:
                        partial_at = time.monotonic()
                    pending = asyncio.ensure_future(c.recv(None))
            await c.send_chunk(seq, b"", is_final=True)
            seq += 1
            ended = time.monotonic()
            while True:
                ev = await asyncio.wait_for(pending, 30)
                pending = asyncio.ensure_future(c.recv(None))
                if isinstance(ev, p.AsrPartial) and ev.utterance_index == index and partial_at is None:
                    partial_at = time.monotonic()
                if isinstance(ev, p.TranslationResult):
                    results[ev.utterance_index] = results.get(ev.utterance_index, 0) + 1
                    if ev.utterance_index == index:
                        end_to_result.append((time.monotonic() - ended) * 1000)
                        break
            pending.cancel()
            if partial_at is not None:
                first_partial.append((partial_at - started) * 1000)
    lost = sum(1 for i in range(utterances) if i not in results)
    doubled = sum(1 for n in results.values() if n > 1)
    return {
        "first_partial": first_partial,
        "end_to_result": end_to_result,
        "lost": [lost],
        "doubled": [doubled],
    }


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def layout(workdir: Path, spread: bool, utterances: int) -> dict[str, dict[str, float]]:
    async with Fleet(workdir, measure=False) as fleet:
        a = await fleet.scheduler("A")
        b = await fleet.scheduler("B")
        fleet.node("n1", [a.url, b.url], delay_ms=0, slots=4, engine=ENGINE)
        if spread:
            fleet.node("n2", [b.url, a.url], delay_ms=0, slots=4, engine=ENGINE)
        for n in ["n1", "n2"] if spread else ["n1"]:
            await fleet.wait_node("A", n)
            await fleet.wait_node("B", n)
        on_a, on_b = await asyncio.gather(session(a.url, utterances), session(b.url, utterances))
    out = {}
    for name, m in (("A", on_a), ("B", on_b)):
        out[name] = {
            "first_partial_p50_ms": round(statistics.median(m["first_partial"]), 1)
            if m["first_partial"]
            else -1,
            "first_partial_p90_ms": round(pct(m["first_partial"], 0.9), 1),
            "end_to_result_p50_ms": round(statistics.median(m["end_to_result"]), 1),
            "end_to_result_p90_ms": round(pct(m["end_to_result"], 0.9), 1),
            "captioned": len(m["first_partial"]),
            "lost": m["lost"][0],
            "doubled": m["doubled"][0],
        }
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = {}
    with tempfile.TemporaryDirectory(prefix="lm-captions-") as tmp:
        for name, spread in (("nodes on A only", False), ("nodes spread", True)):
            work = Path(tmp) / name.replace(" ", "-")
            work.mkdir()
            report[name] = await layout(work, spread, args.utterances)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.utterances} utterances of {SECONDS} s per session, streamed in real time")
        print(
            f"{'layout':<18}{'session on':<12}{'first partial p50/p90 ms':<28}{'end->result p50/p90 ms':<26}captioned lost doubled"
        )
        for name, per in report.items():
            for inst, m in per.items():
                print(
                    f"{name:<18}{inst:<12}{m['first_partial_p50_ms']:>8} / {m['first_partial_p90_ms']:<15}"
                    f"{m['end_to_result_p50_ms']:>8} / {m['end_to_result_p90_ms']:<13}"
                    f"{m['captioned']:>5}/{args.utterances} {m['lost']:>4} {m['doubled']:>7}"
                )
    bad = any(m["lost"] or m["doubled"] for per in report.values() for m in per.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
