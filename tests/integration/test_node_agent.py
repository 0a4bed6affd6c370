"""The node agent's own edges: a scheduler that refuses it for good, and results that are
never acknowledged piling up past the agent's bound."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from linguamesh import protocol as p
from linguamesh.engines.registry import build
from linguamesh.node.agent import FatalNodeError, NodeAgent
from linguamesh.node.config import NodeConfig

from ..conftest import SCALE, Cluster, free_port, pcm, test_engines
from ..scripted_node import accept_node, assign


def agent(url: str, **kw: object) -> NodeAgent:
    cfg = NodeConfig(
        scheduler_urls=[url], node_id="agent-1", engines=test_engines(), backoff_initial=0.05, backoff_max=0.2,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return NodeAgent(cfg, build(cfg.engines))


async def test_a_wrong_token_stops_the_node_instead_of_retrying(cluster: Cluster) -> None:
    s = await cluster.scheduler(node_token="right-token")
    a = agent(s.url, token="wrong-token")
    try:
        with pytest.raises(FatalNodeError, match="unauthorized"):
            await asyncio.wait_for(a.run(), 10 * SCALE)
        assert a.metrics.value("node_connect_failures") == 0 and a.metrics.value("node_connects") == 0
        assert "agent-1" not in s.sched.nodes
    finally:
        a.engines.close()


async def test_unacknowledged_results_are_kept_up_to_the_bound_newest_first() -> None:
    """A scheduler that never acks: the agent keeps its newest results (max_unacked_results)
    and offers exactly those when it registers again."""
    registrations: list[p.NodeRegister] = []
    results: list[str] = []
    second = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        registrations.append(await accept_node(ws))
        if len(registrations) > 1:
            second.set()
            return
        for i in range(4):
            await ws.send(p.encode_str(assign(f"job-{i}", i, pcm(0.1))))
        async for frame in ws:
            msg = p.decode_node(frame)
            if isinstance(msg, p.JobResult):
                results.append(msg.job_id)
                if len(results) == 4:
                    await ws.close()  # none acked
                    return

    port = free_port()
    async with serve(handler, "127.0.0.1", port):
        a = agent(f"ws://127.0.0.1:{port}", max_unacked_results=2, max_concurrent_jobs=4)
        task = asyncio.create_task(a.run())
        try:
            await asyncio.wait_for(second.wait(), 10 * SCALE)
        finally:
            await a.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            a.engines.close()
    assert sorted(results) == ["job-0", "job-1", "job-2", "job-3"]
    kept = registrations[1].unacked_results
    assert len(kept) == 2 and set(kept) == set(results[-2:])  # the two newest, the oldest dropped
    assert len(a.unacked) == 2


async def test_a_reconnect_hint_sends_the_node_to_the_address_it_names_not_back() -> None:
    """A draining scheduler (A, first in the node's list) names B in its ``reconnect``: the
    node dials B next, not A again, and the hint does not grow the list."""
    seen: list[str] = []
    at_b = asyncio.Event()
    port_a, port_b = free_port(), free_port()

    async def a_handler(ws: ServerConnection) -> None:
        await accept_node(ws)
        seen.append("A")
        await ws.send(
            p.encode_str(p.Reconnect(delay_ms=50, reason="draining", url=f"ws://127.0.0.1:{port_b}"))
        )
        await ws.close(1012)

    async def b_handler(ws: ServerConnection) -> None:
        await accept_node(ws)
        seen.append("B")
        at_b.set()
        await ws.wait_closed()

    async with serve(a_handler, "127.0.0.1", port_a), serve(b_handler, "127.0.0.1", port_b):
        cfg = NodeConfig(
            scheduler_urls=[f"ws://127.0.0.1:{port_a}", f"ws://127.0.0.1:{port_b}", f"ws://127.0.0.1:{free_port()}"],
            node_id="agent-1", engines=test_engines(), backoff_initial=0.05, backoff_max=0.2,
        )  # fmt: skip
        a = NodeAgent(cfg, build(cfg.engines))
        task = asyncio.create_task(a.run())
        try:
            await asyncio.wait_for(at_b.wait(), 10 * SCALE)
        finally:
            await a.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            a.engines.close()
    assert seen == ["A", "B"]
    assert len(a.urls) == 3
