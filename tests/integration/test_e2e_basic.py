"""A session, a node and a scheduler on loopback: the happy paths."""

from __future__ import annotations

from linguamesh.client import SessionClient

from ..conftest import SCALE, Cluster, eventually, pcm, receive_until, start_node, test_engines, until_result


async def test_three_utterances_come_back_in_order_with_timings(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    # the first utterance is the slowest: order must still hold
    await cluster.node(s.url, engines=test_engines(delay_ms=5, text="utt {seconds}"))
    async with SessionClient(s.url, src="en", tgt="es") as c:
        for i, secs in enumerate((0.9, 0.3, 0.1)):
            await c.send_utterance(i, pcm(secs))
        results = await c.results(3, timeout=10 * SCALE)
    assert [r.utterance_index for r in results] == [0, 1, 2]
    for r, secs in zip(results, (0.9, 0.3, 0.1), strict=True):
        assert r.status == "ok"
        assert r.text_asr == f"Utt {secs:.2f}."
        assert r.text_translated == f"[es] Utt {secs:.2f}."
        assert r.tts_audio and r.tts_audio[:4] == b"RIFF"
        assert r.node_id == "node-a"
        assert r.timings.total_ms > 0 and r.timings.asr_ms > 0 and r.timings.nmt_ms > 0
        assert r.timings.tts_ms > 0


async def test_node_started_before_scheduler_joins_and_serves(cluster: Cluster) -> None:
    from ..conftest import free_port

    port = free_port()
    node = await start_node(f"ws://127.0.0.1:{port}", "early-node", wait=False)
    cluster.nodes.append(node)
    import asyncio

    await eventually(lambda: node.agent.metrics.value("node_connect_failures") >= 2, 5, "the node to retry")
    assert not node.agent.connected.is_set() and node.agent.metrics.value("node_connects") == 0
    s = await cluster.scheduler(port=port)
    await asyncio.wait_for(node.agent.connected.wait(), 5 * SCALE)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        r = await c.next_result(10 * SCALE)
    assert r.status == "ok" and r.node_id == "early-node"


async def test_two_target_languages_give_two_ordered_streams(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es", extra_tgt_langs=["fr"]) as c:
        for i in range(4):
            await c.send_utterance(i, pcm(0.1 * (4 - i)))
        results = await c.results(8, timeout=10 * SCALE)
    by_lang: dict[str, list[int]] = {}
    for r in results:
        assert r.status == "ok"
        assert r.text_translated.startswith(f"[{r.tgt_lang}]")
        by_lang.setdefault(r.tgt_lang, []).append(r.utterance_index)
    assert by_lang == {"es": [0, 1, 2, 3], "fr": [0, 1, 2, 3]}


async def test_job_api_reports_state_and_history(cluster: Cluster) -> None:
    import httpx

    s = await cluster.scheduler()
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        r = await c.next_result(10 * SCALE)
    async with httpx.AsyncClient() as http:
        job = (await http.get(f"{s.http}/api/v1/jobs/{r.job_id}")).json()
        langs = (await http.get(f"{s.http}/api/v1/languages")).json()
        nodes = (await http.get(f"{s.http}/api/v1/nodes")).json()
        pools = (await http.get(f"{s.http}/api/v1/pools")).json()
        missing = await http.get(f"{s.http}/api/v1/jobs/job-NOPE")
    assert job["state"] == "completed" and job["attempt_id"] == 1
    assert [h["state"] for h in job["history"]] == [
        "created",
        "assigned",
        "dispatched",
        "accepted",
        "running",
        "completed",
    ]
    assert {"src": "en", "tgt": "es"} in langs["pairs"]
    assert nodes["nodes"][0]["node_id"] == "node-a"
    assert pools["pools"][0]["name"] == "en-es-fr"
    assert missing.status_code == 404


async def test_asr_partial_precedes_result(cluster: Cluster) -> None:
    s = await cluster.scheduler()
    await cluster.node(s.url, engines=test_engines(delay_ms=20))
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await c.send_utterance(0, pcm(0.2))
        kinds = [type(e).__name__ for e in await receive_until(c, until_result())]
    assert "AsrPartial" in kinds
    assert kinds.index("AsrPartial") < kinds.index("TranslationResult")
    assert kinds[0] == "JobStatus"
