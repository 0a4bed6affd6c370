"""A node SIGKILLed while an utterance is streamed to it: the next attempt
gets all the audio buffered so far, then the live rest; every utterance is delivered
once, with its whole audio."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, eventually
from ..integration.test_live_streaming import collecting, results, stream
from ..procs import node_proc, scheduler_proc, wait_node


async def test_a_node_killed_mid_stream_loses_no_audio_and_doubles_nothing(tmp_path: Path) -> None:
    async with (
        scheduler_proc(tmp_path) as (url, _sched),
        node_proc(tmp_path, url, "node-a") as a,
        node_proc(tmp_path, url, "node-b") as b,
    ):
        http = url.replace("ws://", "http://")
        await wait_node(http, "node-a")
        await wait_node(http, "node-b")
        procs = {"node-a": a, "node-b": b}
        killed = None
        async with SessionClient(url, src="en", tgt="es") as c, collecting(c) as events:
            seq = 0
            for index in range(3):
                seq = await stream(c, 1.0, seq)
                if index == 1:  # kill the node this utterance streams to, half way through it
                    (assigned,) = [
                        e
                        for e in events
                        if isinstance(e, p.JobStatus) and e.utterance_index == 1 and e.status == "assigned"
                    ]
                    killed = assigned.node_id
                    assert killed is not None
                    procs[killed].proc.send_signal(signal.SIGKILL)
                seq = await stream(c, 1.0, seq)
                await c.send_chunk(seq, b"", is_final=True)
                seq += 1
            await eventually(lambda: len(results(events)) >= 3, 20 * SCALE, "three results")
            await asyncio.sleep(0.5)  # a duplicate would arrive by now
        got = results(events)
        per_index = Counter(r.utterance_index for r in got)
        lost = [i for i in range(3) if per_index[i] == 0]
        duplicated = [i for i, n in per_index.items() if n > 1]
        assert (lost, duplicated) == ([], []), got
        for r in got:  # every utterance with all of its 2.00 s of audio, once
            assert r.status == "ok" and r.text_asr == "Test utterance 2.00.", r
        failed_over = next(r for r in got if r.utterance_index == 1)
        assert failed_over.node_id != killed
