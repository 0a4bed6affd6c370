"""Instance death and Redis outages, for real: a killed scheduler process, a stopped redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.client import ClientError, SessionClient
from linguamesh.state.redis import RedisStateStore

from ..conftest import SCALE, Cluster, eventually, free_port, late_events, pcm, test_engines
from ..procs import start_scheduler_process
from ..redis_server import RedisServer


async def test_killing_an_instance_moves_nodes_and_session_and_loses_nothing(
    cluster: Cluster, redis_url: str
) -> None:
    port_a = free_port()
    flags = ("--ack-timeout", "1", "--result-timeout", "1.5", "--pending-timeout", "8")
    _, proc_a = await start_scheduler_process(
        "--redis-url", redis_url, "--instance-id", "A", "--log", "warning", *flags, port=port_a
    )
    url_a = f"ws://127.0.0.1:{port_a}"
    try:
        b = await cluster.scheduler(
            instance_id="B",
            store=RedisStateStore(redis_url),
            ack_timeout=1,
            result_timeout=1.5,
            pending_timeout=8,
        )
        for i in range(2):
            await cluster.node(
                [url_a, b.url], f"n{i}", engines=test_engines(delay_ms=250), max_concurrent_jobs=2
            )
        c = SessionClient(url_a, src="en", tgt="es")
        await c.connect()
        results: dict[int, p.TranslationResult] = {}
        total = 12

        async def collect(until: int, timeout: float) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout * SCALE
            while len(results) < until:
                ev = await c.recv(max(0.05, end - loop.time()))
                if isinstance(ev, p.TranslationResult):
                    assert ev.utterance_index not in results, f"duplicate result for {ev.utterance_index}"
                    results[ev.utterance_index] = ev

        for i in range(6):
            await c.send_utterance(i, pcm(0.1), request_id=f"r{i}")
            await asyncio.sleep(0.05 * SCALE)
        await collect(1, 10)  # work is flowing through A
        os.kill(proc_a.proc.pid, signal.SIGKILL)  # instance A dies mid-stream
        try:
            while True:
                await collect(total, 2)
        except (ConnectionClosed, TimeoutError):
            pass
        c.url = b.url + "/ws/session"  # the load balancer now sends the client to B
        await c.resume()
        for i in range(6, total):
            await c.send_utterance(i, pcm(0.1), request_id=f"r{i}")
        await collect(total, 40)
        for ev in await late_events(c, wait=0.5, quiet=0.3):
            assert not isinstance(ev, p.TranslationResult), f"late or repeated result {ev.utterance_index}"
        await c.disconnect()
    finally:
        proc_a.proc.kill()
        proc_a.proc.wait()
    assert sorted(results) == list(range(total))
    assert all(r.status == "ok" for r in results.values()), {
        i: r.error for i, r in results.items() if r.error
    }
    assert {n.agent.node_id for n in cluster.nodes} == set(b.sched.nodes)  # both nodes moved to B


async def test_redis_outage_fails_closed_and_recovers(cluster: Cluster, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        s = await cluster.scheduler(instance_id="A", store=RedisStateStore(server.url), pending_timeout=20)
        await cluster.node(s.url, "n1")
        async with SessionClient(s.url, src="en", tgt="es") as c:
            await c.send_utterance(0, pcm(0.1))
            assert (await c.next_result(10 * SCALE)).status == "ok"
            server.stop()  # Redis goes away while the session is open
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"{s.http}/readyz", timeout=10 * SCALE)
            assert ready.status_code == 503 and "state store unreachable" in ready.text
            await c.send_utterance(1, pcm(0.1))
            err = await c.recv(10 * SCALE)
            assert isinstance(err, p.Error) and err.code == "dependency_down", err
            # new sessions fail closed too, with the same clear code
            other = SessionClient(s.url, src="en", tgt="es")
            with pytest.raises(ClientError) as refused:
                await other.connect()
            assert refused.value.code == "dependency_down"
            server.start()  # Redis is back (empty: a restart without persistence)
            async with httpx.AsyncClient() as http:
                for _ in range(int(100 * SCALE)):
                    if (await http.get(f"{s.http}/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.1 * SCALE)
                else:
                    raise AssertionError("/readyz never turned ready after Redis came back")
        # full service again: a new session works end to end
        await eventually(lambda: s.sched.store.nodes().get("n1") is not None, 5, "node registry")
        async with SessionClient(s.url, src="en", tgt="es") as c2:
            await c2.send_utterance(0, pcm(0.1))
            r = await c2.next_result(15 * SCALE)
        assert r.status == "ok"
    finally:
        server.stop()


_ = Any
