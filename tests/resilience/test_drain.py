"""Graceful drain on SIGTERM: real scheduler and node processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.client import ClientError, SessionClient

from ..conftest import SCALE, pcm
from ..fleet import Fleet, Speaker, finish
from ..procs import wait_log

FLAGS = ("--pending-timeout", "10", "--ack-timeout", "2", "--result-timeout", "20")


def _events(log: Path, name: str) -> list[dict[str, object]]:
    return [r for r in (json.loads(x) for x in log.read_text().splitlines()) if r["event"] == name]


async def test_sigterm_on_a_scheduler_delivers_jobs_in_flight_then_sends_everyone_away(
    tmp_path: Path,
) -> None:
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("S", *FLAGS, "--drain-timeout", "20")
        fleet.node("n1", [s.url], delay_ms=500, slots=4)
        await fleet.wait_node("S", "n1")
        c = SessionClient(s.url, src="en", tgt="es", tts=False)
        await c.connect()
        for i in range(4):
            await c.send_utterance(i, pcm(0.1))
        await asyncio.sleep(0.5)  # the four jobs run on n1
        fleet.signal("S", signal.SIGTERM)
        termed = time.monotonic()
        async with httpx.AsyncClient() as http:  # not ready from the first moment of the drain
            await asyncio.sleep(0.1)
            ready = await http.get(f"{s.http}/readyz", timeout=5)
        assert ready.status_code == 503 and "draining" in ready.text, ready.text
        with pytest.raises(ClientError) as refused:  # no new sessions
            await SessionClient(s.url, src="en", tgt="es").connect()
        assert refused.value.code == "draining"
        await c.send_utterance(4, pcm(0.1))  # a new utterance: refused with a code, not lost
        events: list[p.SessionEvent] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                events.append(await c.recv(30 * SCALE))
        results = sorted(e.utterance_index for e in events if isinstance(e, p.TranslationResult))
        assert results == [0, 1, 2, 3], events
        assert all(e.status == "ok" for e in events if isinstance(e, p.TranslationResult))
        refusals = [e for e in events if isinstance(e, p.Error)]
        assert [(e.code, e.ref) for e in refusals] == [("draining", "utterance 4")]
        hint = [e for e in events if isinstance(e, p.Reconnect)]
        assert len(hint) == 1 and hint[0].reason == "draining" and hint[0].delay_ms > 0
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert fleet.wait_exit("S", 25) == 0
        assert time.monotonic() - termed < 20 * SCALE


async def test_sigterm_in_a_cluster_moves_clients_at_once_and_loses_nothing(tmp_path: Path) -> None:
    async with Fleet(tmp_path) as fleet:
        a = await fleet.scheduler("A", *FLAGS)
        b = await fleet.scheduler("B", *FLAGS)
        fleet.node("n1", [a.url, b.url], delay_ms=500, slots=8)
        await fleet.wait_node("B", "n1")
        speaker = Speaker([a.url, b.url], "s1")
        await speaker.start()
        for _ in range(4):
            await speaker.say()
        await asyncio.sleep(0.5)
        fleet.signal("A", signal.SIGTERM)
        await asyncio.sleep(0.3)
        for _ in range(4):  # the client is on B by now, or comes back there and re-sends these
            await speaker.say()
            await asyncio.sleep(0.2)
        t = await finish([speaker], 30 * SCALE)
        assert t.ok == 8, t.line()
        assert speaker.reconnects >= 1 and speaker.abandoned == 0
        assert fleet.wait_exit("A", 30) == 0


async def test_sigterm_on_a_node_finishes_its_jobs_and_takes_no_new_ones(tmp_path: Path) -> None:
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("S", *FLAGS)
        fleet.node("n1", [s.url], delay_ms=700, slots=4)
        await fleet.wait_node("S", "n1")
        speaker = Speaker([s.url], "s1")
        await speaker.start()
        for _ in range(2):
            await speaker.say()
        await asyncio.sleep(0.5)  # two jobs run on n1
        fleet.signal("n1", signal.SIGTERM)
        await asyncio.sleep(0.3)
        fleet.node("n2", [s.url], delay_ms=50, slots=4)
        await fleet.wait_node("S", "n2")
        for _ in range(3):  # n1 counts as full: these go to n2
            await speaker.say()
        t = await finish([speaker], 30 * SCALE)
        assert t.ok == 5, t.line()
        assert fleet.wait_exit("n1", 20) == 0
        n1 = [(r["utterance_index"], r["attempt_id"]) for r in _events(tmp_path / "n1.1.log", "job.received")]
        n2 = [(r["utterance_index"], r["attempt_id"]) for r in _events(tmp_path / "n2.1.log", "job.received")]
        assert sorted(n1) == [(0, 1), (1, 1)]  # finished where they ran: nothing redone
        assert sorted(n2) == [(2, 1), (3, 1), (4, 1)]
        drained = _events(tmp_path / "n1.1.log", "node.drained")
        assert drained and drained[0]["complete"] is True
        gone = [r for r in _events(tmp_path / "S.1.log", "node.gone") if r["node_id"] == "n1"]
        assert [(r["why"], r["level"]) for r in gone] == [
            ("closed by the node", "info")
        ]  # a stop, not a crash


async def test_a_second_sigterm_stops_a_draining_node_at_once(tmp_path: Path) -> None:
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("S", *FLAGS)
        fleet.node("n1", [s.url], delay_ms=3000, slots=4)
        fleet.node(
            "n2",
            [s.url],
            delay_ms=50,
            slots=4,
        )
        await fleet.wait_node("S", "n1")
        await fleet.wait_node("S", "n2")
        speaker = Speaker([s.url], "s1")
        await speaker.start()
        for _ in range(4):
            await speaker.say()
        await asyncio.sleep(0.5)
        fleet.signal("n1", signal.SIGTERM)
        await asyncio.sleep(0.3)
        fleet.signal("n1", signal.SIGTERM)
        t0 = time.monotonic()
        assert fleet.wait_exit("n1", 10) is not None
        assert time.monotonic() - t0 < 3 * SCALE
        fleet.signal("n2", signal.SIGKILL)  # a crash, for contrast: the scheduler says so
        fleet.node("n3", [s.url], delay_ms=50, slots=4)
        t = await finish([speaker], 40 * SCALE)  # n1's jobs fail over to n2, or n3
        assert t.ok == 4, t.line()
        # n2 may have delivered every result before it died: its loss is logged by then or soon
        await wait_log(tmp_path / "S.1.log", '"node_id": "n2", "why": "connection lost')
        gone = {r["node_id"]: (r["why"], r["level"]) for r in _events(tmp_path / "S.1.log", "node.gone")}
        assert gone["n2"][1] == "warning" and gone["n2"][0].startswith("connection lost"), gone
