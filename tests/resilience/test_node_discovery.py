"""A registration raced by a new instance, with little slack: a node registers on instance A and
a session on instance B sends three utterances half a second later, with a pending timeout
of 1.5 s. B must learn of the node within its stated bound (one instance heartbeat,
0.5 s, usually at once through A's notice) and every waiting job must be woken by it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from linguamesh.client import SessionClient

from ..conftest import SCALE, pcm, start_node, test_engines
from ..fleet import Fleet

RUNS = 50


async def _pools(http: httpx.AsyncClient, base: str) -> list[str]:
    return [n for pool in (await http.get(f"{base}/api/v1/pools")).json()["pools"] for n in pool["nodes"]]


async def test_a_node_registered_on_another_instance_serves_every_waiting_job_50_runs(tmp_path: Path) -> None:
    async with Fleet(tmp_path) as fleet:
        flags = ("--pending-timeout", "1.5", "--ack-timeout", "2", "--result-timeout", "4")
        a = await fleet.scheduler("A", *flags)
        b = await fleet.scheduler("B", *flags)
        failures: list[str] = []
        seen_after: list[float] = []
        async with httpx.AsyncClient() as http:
            for run in range(RUNS):
                node = await start_node(a.url, f"n{run}", engines=test_engines(delay_ms=5))
                registered = time.monotonic()
                try:
                    await asyncio.sleep(0.5 * SCALE)
                    if f"n{run}" in await _pools(http, b.http):
                        seen_after.append(time.monotonic() - registered)
                    async with SessionClient(b.url, src="en", tgt="es", tts=False) as c:
                        for i in range(3):
                            await c.send_utterance(i, pcm(0.1))
                        results = await c.results(3, timeout=10 * SCALE)
                    bad = [
                        (r.utterance_index, r.error.code if r.error else "?")
                        for r in results
                        if r.status != "ok"
                    ]
                    if bad or [r.utterance_index for r in results] != [0, 1, 2]:
                        failures.append(f"run {run}: {bad or [r.utterance_index for r in results]}")
                finally:
                    await node.agent.stop()
                    await asyncio.wait_for(node.task, 10 * SCALE)
                end = time.monotonic() + 5 * SCALE
                while f"n{run}" in await _pools(http, b.http) and time.monotonic() < end:  # noqa: ASYNC110 - polls HTTP
                    await asyncio.sleep(0.02)
        assert not failures, f"{len(failures)} of {RUNS} runs failed: {failures[:5]}"
        # the stated bound: B lists the node within 0.5 s of its registration on A, every run
        assert len(seen_after) == RUNS, f"B saw the node within 0.5 s in only {len(seen_after)} runs"
