"""One session flooding utterances must not starve another.

Two nodes of two slots each, with engines that take ~20 ms a job. The other
session sends 40 utterances, one every 100 ms, first alone, then while a flooder
sends as fast as it can for the same time. Reported: the other session's median
latency in both runs and their ratio (target <= 3x), its failures (must be 0),
and how much of the flood was refused with ``rate_limited``. The two sessions
stand for two users, so the per-address buckets are set wide here (on loopback
both come from 127.0.0.1); the per-session buckets are the defaults.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, pcm, test_engines

ROOT = Path(__file__).resolve().parents[2]
UTTERANCES = 40
PACE = 0.1


async def _paced(url: str) -> tuple[list[float], list[str]]:
    """The other session: latencies (ms) of its results, and its failure codes."""
    latencies: list[float] = []
    failures: list[str] = []
    sent: dict[int, float] = {}
    async with SessionClient(url, src="en", tgt="es", tts=False) as c:

        async def read() -> None:
            while len(latencies) + len(failures) < UTTERANCES:
                ev = await c.recv(30 * SCALE)
                if isinstance(ev, p.TranslationResult):
                    if ev.status == "ok":
                        latencies.append((time.perf_counter() - sent[ev.utterance_index]) * 1000)
                    else:
                        failures.append(ev.error.code if ev.error else "?")
                elif isinstance(ev, p.Error):
                    failures.append(ev.code)

        reader = asyncio.create_task(read())
        for i in range(UTTERANCES):
            sent[i] = time.perf_counter()
            await c.send_utterance(i, pcm(0.2))
            await asyncio.sleep(PACE)
        await asyncio.wait_for(reader, 60 * SCALE)
    return latencies, failures


async def _flood(url: str, seconds: float) -> dict[str, int]:
    """The flooder, in a process of its own (as it would be on another machine)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.security.flooder", url, str(seconds),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    assert proc.returncode == 0, out
    counts: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    return counts


async def test_a_flooding_session_does_not_starve_another(cluster: Cluster) -> None:
    s = await cluster.scheduler(
        ip_utterances_per_s=1e6, ip_utterance_burst=1e6, ip_audio_per_s=1e6, ip_audio_burst=1e6
    )
    for n in ("n1", "n2"):
        await cluster.node(s.url, n, max_concurrent_jobs=2, engines=test_engines(delay_ms=5, tts=False))
    alone, failed_alone = await _paced(s.url)
    flooder = asyncio.create_task(_flood(s.url, UTTERANCES * PACE + 2))
    await asyncio.sleep(1.0 * SCALE)  # the flooder's process is up and flooding
    flooded, failed = await _paced(s.url)
    counts = await flooder
    ratio = statistics.median(flooded) / statistics.median(alone)
    print(
        f"\nother session alone: median {statistics.median(alone):.1f} ms; under a flood of "
        f"{counts.get('sent', 0)} utterances ({counts.get('rate_limited', 0)} rate_limited, "
        f"{counts.get('ok', 0)} translated): median {statistics.median(flooded):.1f} ms, "
        f"{ratio:.2f}x, failures {len(failed)}"
    )
    assert not failed_alone and not failed, (failed_alone, failed)
    assert counts.get("rate_limited", 0) > 0.5 * counts["sent"]
    # target 3x (measured alone: 2.3x); generous for a loaded CI machine, where the flooder's
    # process competes for the same two cores (before the fix: 167x and failures)
    assert ratio <= 10.0 * SCALE
