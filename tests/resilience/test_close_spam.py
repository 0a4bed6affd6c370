"""``session_close`` spammed while a result arrives: one ``session_closed``,
the result once, and no handler left hanging (the process stops promptly)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, pcm
from ..fleet import Fleet


async def test_session_close_spammed_while_a_result_arrives(tmp_path: Path) -> None:
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("S", "--drain-timeout", "5")
        fleet.node("n1", [s.url], delay_ms=150, slots=4)
        await fleet.wait_node("S", "n1")
        for _ in range(5):
            c = SessionClient(s.url, src="en", tgt="es", tts=False)
            await c.connect()
            await c.send_utterance(0, pcm(0.1))
            await asyncio.sleep(0.3)  # the result is about to arrive
            events: list[p.SessionEvent] = []

            async def spam(c: SessionClient) -> None:
                try:
                    for _ in range(200):
                        await c.close_session()
                        await asyncio.sleep(0.002)
                except ConnectionClosed:
                    pass

            spammer = asyncio.create_task(spam(c))
            try:
                while True:
                    events.append(await c.recv(10 * SCALE))
            except ConnectionClosed:
                pass
            await spammer
            closed = [e for e in events if isinstance(e, p.SessionClosed)]
            results = [e for e in events if isinstance(e, p.TranslationResult)]
            assert len(closed) == 1, events
            assert [r.utterance_index for r in results] == [0]
        t0 = time.monotonic()
        fleet.signal("S", signal.SIGTERM)
        assert fleet.wait_exit("S", 15) == 0
        took = time.monotonic() - t0
        assert took < 3 * SCALE, f"the scheduler took {took:.1f}s to stop"
        log = (tmp_path / "S.1.log").read_text()
        assert "task.crashed" not in log and "handler_failed" not in log
