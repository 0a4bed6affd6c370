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
        reg = p.decode_node(await ws.recv())
        assert isinstance(reg, p.NodeRegister)
        registrations.append(reg)
        limits = p.Limits(max_message_bytes=1 << 20, max_utterance_seconds=30)
        ack = p.NodeRegisterAck(node_id=reg.node_id, heartbeat_interval_s=5, pools=[], limits=limits)
        await ws.send(p.encode_str(ack))
        if len(registrations) > 1:
            second.set()
            return
        for i in range(4):
            job = p.JobAssign(
                job_id=f"job-{i}", attempt_id=1, trace_id="t", session_id="s", utterance_index=i,
                src_lang="en", tgt_lang="es", audio=pcm(0.1), audio_format="pcm16", sample_rate=16000,
                stages=["asr", "nmt"], deadline_ms=10000,
            )  # fmt: skip
            await ws.send(p.encode_str(job))
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
