"""Redis sizing: memory per session and Redis operations per utterance, measured on a real
redis-server, scheduler and node (test engines that speak a set length of speech back).

    python bench/redis_sizing.py [--sessions 10] [--utterances 60] [--speech 3.0]

Phases, each on a fresh Redis database:
  whole     sessions send whole ``utterance`` messages (``--speech`` seconds each); the
            node answers each with as many seconds of speech (its TTS)
  streamed  the same utterances as 100 ms ``audio_chunk`` messages (live: the job starts
            at the first chunk), then ``is_final``
For each: Redis commands and scheduler round trips per utterance, and the memory the
sessions hold while they live (``used_memory`` growth, and MEMORY USAGE of each key
family: the replay window with speech, the transcript without it, the rest). Then the
sizing table: memory for N active sessions and per session-hour of steady speech
(an utterance every ``--every`` seconds). Bounded: every phase stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from linguamesh import protocol as p  # noqa: E402
from linguamesh.client import SessionClient  # noqa: E402
from tests.conftest import pcm  # noqa: E402
from tests.fleet import Fleet  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

FAST = {
    f"LINGUAMESH_{k}": "1e9"
    for k in (
        "SESSION_UTTERANCES_PER_S",
        "SESSION_UTTERANCE_BURST",
        "SESSION_AUDIO_PER_S",
        "SESSION_AUDIO_BURST",
        "IP_UTTERANCES_PER_S",
        "IP_UTTERANCE_BURST",
        "IP_AUDIO_PER_S",
        "IP_AUDIO_BURST",
    )
}
FAMILIES = (("window", r":history:"), ("transcript", r":transcript:"), ("jobs", r":job:"))


async def commands(r: Any) -> int:
    stats = await r.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def round_trips(http_base: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{http_base}/metrics")).text
    return sum(
        float(x) for x in re.findall(r"^linguamesh_redis_round_trips_total\{[^}]*\} (\S+)$", text, re.M)
    )


async def key_memory(r: Any) -> dict[str, int]:
    out = {name: 0 for name, _ in FAMILIES} | {"other": 0}
    async for key in r.scan_iter(count=1000):
        k = key.decode()
        size = int(await r.memory_usage(key, samples=0) or 0)
        family = next((name for name, pat in FAMILIES if re.search(pat, k)), "other")
        out[family] += size
    return out


async def speak(c: SessionClient, utterances: int, speech: bytes, streamed: bool) -> int:
    """One session's utterances one after another, each awaited; returns its results."""
    got = 0
    seq = 0
    chunk = 3200  # 100 ms at 16 kHz, 16 bit
    for i in range(utterances):
        if streamed:
            for at in range(0, len(speech), chunk):
                await c.send_chunk(seq, speech[at : at + chunk])
                seq += 1
            await c.send_chunk(seq, b"", is_final=True)
            seq += 1
        else:
            await c.send_utterance(i, speech)
        while not isinstance(await c.recv(60), p.TranslationResult):
            pass
        got += 1
    return got


async def phase(fleet: Fleet, redis_port: int, args: argparse.Namespace, streamed: bool) -> dict[str, Any]:
    """A scheduler and a node of its own on a fresh database; the sessions speak, and
    Redis is measured while they still live."""
    db = 2 if streamed else 1
    url = f"redis://127.0.0.1:{redis_port}/{db}"
    r = aioredis.Redis.from_url(url)
    await r.flushdb()
    name = "S" if streamed else "W"
    s = await fleet.scheduler(name, "--redis-url", url, "--instance-id", name, env=FAST)
    fleet.node(
        f"n-{name}",
        [s.url],
        delay_ms=20,
        slots=max(4, args.sessions),
        engine=f"tts_seconds = {args.speech}\n",
    )
    await fleet.wait_node(name, f"n-{name}")
    clients = [SessionClient(s.url, src="en", tgt="es", partials=False) for _ in range(args.sessions)]
    for c in clients:
        await c.connect()
    mem0 = int((await r.info("memory"))["used_memory"])
    cmd0, rt0 = await commands(r), await round_trips(s.http)
    t0 = time.monotonic()
    speech = pcm(args.speech)
    got = await asyncio.wait_for(
        asyncio.gather(*(speak(c, args.utterances, speech, streamed) for c in clients)), args.time_limit
    )
    took = time.monotonic() - t0
    await asyncio.sleep(1.0)  # the last events reach the history
    cmd1, rt1 = await commands(r), await round_trips(s.http)
    mem1 = int((await r.info("memory"))["used_memory"])
    families = await key_memory(r)
    for c in clients:
        await c.disconnect()
    await r.aclose()
    n = args.sessions * args.utterances
    return {
        "results": sum(got),
        "commands_per_utterance": (cmd1 - cmd0) / n,
        "round_trips_per_utterance": (rt1 - rt0) / n,
        "memory_per_session": (mem1 - mem0) / args.sessions,
        "families_per_session": {k: v / args.sessions for k, v in families.items()},
        "seconds": took,
    }


def kb(v: float) -> str:
    if v < 10 * 1024:
        return f"{v / 1024:.1f} KB"
    return f"{v / 1024:,.0f} KB" if v < 10 * 1024 * 1024 else f"{v / 1024 / 1024:,.1f} MB"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--utterances", type=int, default=60, help="per session")
    ap.add_argument("--speech", type=float, default=3.0, help="seconds of speech per utterance (and of TTS)")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between utterances in the session-hour")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per phase at most")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lm-sizing-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            async with Fleet(Path(tmp), redis=False, measure=False) as fleet:
                out = {
                    kind: await phase(fleet, redis.port, args, kind == "streamed")
                    for kind in ("whole", "streamed")
                }
        finally:
            redis.stop()
    report(args, out)


def report(args: argparse.Namespace, out: dict[str, dict[str, Any]]) -> None:
    for kind, r in out.items():
        want = args.sessions * args.utterances
        if r["results"] != want:
            print(f"  {kind}: {r['results']} results of {want}", file=sys.stderr)
    print(
        f"LinguaMesh Redis sizing ({args.sessions} sessions x {args.utterances} utterances of "
        f"{args.speech:g} s speech, TTS {args.speech:g} s)"
    )
    for kind, r in out.items():
        fam = r["families_per_session"]
        print(
            f"  {kind:8} {r['commands_per_utterance']:.1f} Redis commands and "
            f"{r['round_trips_per_utterance']:.2f} round trips per utterance; per live session "
            f"{kb(r['memory_per_session'])} (window {kb(fam['window'])}, transcript {kb(fam['transcript'])}, "
            f"jobs {kb(fam['jobs'])}, other {kb(fam['other'])})"
        )
    whole = out["whole"]["families_per_session"]
    per_result_window = whole["window"] / args.utterances
    per_result_transcript = whole["transcript"] / args.utterances
    per_hour = 3600 / args.every
    window_cap = 8 * 1024 * 1024
    live = min(window_cap, per_result_window * per_hour) + per_result_transcript * per_hour
    print(
        f"  per result: window {kb(per_result_window)} (with speech), transcript {kb(per_result_transcript)}"
    )
    print(
        f"  a session-hour ({per_hour:.0f} utterances): window {kb(min(window_cap, per_result_window * per_hour))} "
        f"(capped by --history-bytes 8 MB) + transcript {kb(per_result_transcript * per_hour)} = {kb(live)}; "
        f"after it ends: the transcript, for --transcript-retention"
    )
    print("  sizing (live sessions an hour in, Redis memory for the scheduler's keys):")
    for n in (10, 100, 1000):
        print(f"    {n:>5} sessions: {kb(n * live)}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
