"""Origins, the handshake deadline, connection and rate
limits, and operator data off loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.scheduler.config import SchedulerConfig
from linguamesh.scheduler.edge.app import create_app

from ..conftest import SCALE, Cluster, eventually, free_port, of, pcm, receive_until, transcript_lines
from ..scripted_node import ScriptedNode

INIT = json.dumps({"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "es"})


async def test_origin_rules(cluster: Cluster) -> None:
    s = await cluster.scheduler(allowed_origins="https://partner.example")
    port = s.config.port
    # a web page (any origin, even the scheduler's own) never connects as a node
    for origin in ("https://evil.example", f"http://127.0.0.1:{port}"):
        with pytest.raises(InvalidStatus) as refused:
            await connect(s.url + "/ws/node", origin=origin)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
    # sessions: the page's own origin, the allowed list and non-browsers; no one else
    with pytest.raises(InvalidStatus):
        await connect(s.url + "/ws/session", origin="https://evil.example")  # type: ignore[arg-type]
    for origin in (f"http://127.0.0.1:{port}", "https://partner.example", None):
        async with connect(s.url + "/ws/session", origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send(INIT)
            assert isinstance(p.decode_event(await ws.recv()), p.SessionInitAck)
    refused_count = s.sched.metrics.value("connections_refused", reason="origin")
    assert refused_count == 3


async def test_sockets_that_never_introduce_themselves_are_closed(cluster: Cluster) -> None:
    s = await cluster.scheduler(handshake_timeout=0.3)
    for path, needle in (("/ws/session", "session_init"), ("/ws/node", "node_register")):
        async with connect(s.url + path) as ws:
            await ws.send("not json either")  # bad input does not extend the deadline
            assert p.decode_event(await ws.recv()).code == "bad_message"  # type: ignore[union-attr]
            err = p.decode_event(await asyncio.wait_for(ws.recv(), 5 * SCALE))
            assert isinstance(err, p.Error) and needle in err.message
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # an established session is not subject to it
    async with SessionClient(s.url, src="en", tgt="es") as c:
        await asyncio.sleep(0.6 * SCALE)
        await c.send(p.Ack(seq=0))
        await c.send(p.Utterance(utterance_index=0, audio=pcm(0.1), sample_rate=0))
        assert (await c.recv(5 * SCALE)).code == "bad_message"  # type: ignore[union-attr]
    assert s.sched.admission.total == 0 and not s.sched.admission.open


async def test_connection_limits(cluster: Cluster) -> None:
    s = await cluster.scheduler(max_connections_per_ip=3)
    held = [await connect(s.url + "/ws/session") for _ in range(3)]
    async with connect(s.url + "/ws/session") as ws:
        err = p.decode_event(await ws.recv())
        assert isinstance(err, p.Error) and err.code == "rate_limited"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    await held.pop().close()
    await asyncio.sleep(0.1 * SCALE)
    async with SessionClient(s.url, src="en", tgt="es"):  # a place is free again
        pass
    for ws in held:
        await ws.close()


async def test_rate_limits_answer_rate_limited_with_the_utterance(cluster: Cluster) -> None:
    s = await cluster.scheduler(session_utterances_per_s=1.0, session_utterance_burst=3.0, pending_timeout=30)
    node = ScriptedNode(s.url, "n1", slots=8)
    await node.connect()
    async with SessionClient(s.url, src="en", tgt="es") as c:
        for i in range(5):
            await c.send_utterance(i, pcm(0.1))
        errors = of(await receive_until(c, lambda evs: len(of(evs, p.Error)) >= 2), p.Error)
        assert [(e.code, e.ref) for e in errors] == [
            ("rate_limited", "utterance 3"),
            ("rate_limited", "utterance 4"),
        ]
        assert "try again in" in errors[0].message
    assert s.sched.metrics.value("rate_limited", scope="session") == 2
    await node.close()


async def _exposed_app(**cfg: Any) -> tuple[uvicorn.Server, asyncio.Task[Any], str]:
    """The scheduler's app configured as if bound to 0.0.0.0, served on loopback."""
    port = free_port()
    config = SchedulerConfig(host="0.0.0.0", port=port, node_token="nodes-token", allow_anonymous=True, **cfg)
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_config=None))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, 10, "the app to serve")
    return server, task, f"http://127.0.0.1:{port}"


OPERATOR_ROUTES = (
    "/api/v1/nodes",
    "/api/v1/pools",
    "/api/v1/jobs/job-x",
    "/api/v1/admin/overview",
    "/metrics",
)


@pytest.mark.parametrize("metrics_public", [False, True])
async def test_operator_data_off_loopback_needs_the_token(metrics_public: bool) -> None:
    server, task, base = await _exposed_app(operator_token="op-token", metrics_public=metrics_public)
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            for route in OPERATOR_ROUTES:
                open_ = route == "/metrics" and metrics_public
                r = await http.get(route)
                assert r.status_code == (200 if open_ else 401), (route, r.status_code)
                r = await http.get(route, headers={"Authorization": "Bearer op-token"})
                assert r.status_code in (200, 404), (route, r.status_code)  # 404: no such job
                r = await http.get(route, params={"token": "wrong"})
                assert r.status_code == (200 if open_ else 401), route
            for route in ("/healthz", "/readyz", "/api/v1/languages", "/"):
                assert (await http.get(route)).status_code == 200, route
    finally:
        server.should_exit = True
        await task


async def test_operator_data_off_loopback_is_off_without_a_token() -> None:
    server, task, base = await _exposed_app()
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            for route in OPERATOR_ROUTES:
                assert (await http.get(route)).status_code == 403, route
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_the_viewer_routes_refuse_odd_requests_with_clear_errors(
    cluster: Cluster, store: str, request: pytest.FixtureRequest
) -> None:
    """Any session id, token, Last-Event-ID or room a stranger may send: a coded answer,
    never a 500, and the server serves the real viewer afterwards."""
    cfg: dict[str, Any] = {}
    if store == "redis":
        from linguamesh.state.redis import RedisStateStore

        cfg["store"] = RedisStateStore(request.getfixturevalue("redis_url"))
    s = await cluster.scheduler(**cfg)
    await cluster.node(s.url)
    async with SessionClient(s.url, src="en", tgt="es") as c, httpx.AsyncClient(timeout=10) as http:
        assert c.ack is not None
        await c.send_utterance(0, pcm(0.1))
        await c.next_result(10 * SCALE)
        sid, token = c.session_id, c.ack.view_token
        base = f"{s.http}/api/v1/sessions"
        odd = {
            f"{base}/{'x' * 5000}/events/stream?token={token}": 404,
            f"{base}/no-such-session/transcript?token={token}": 404,
            f"{base}/{sid}/events/stream": 401,
            f"{base}/{sid}/events/stream?token={c.ack.resume_token}": 401,  # the speaker's token is not a view token
            f"{base}/{sid}/events/stream?token={token}&last_event_id=-1": 400,
            f"{base}/{sid}/events/stream?token={token}&last_event_id=1e9": 400,
            f"{base}/{sid}/events?token={token}&since=%00": 400,
            f"{base}/{sid}/transcript?token={token}&format=../../etc": 400,
            f"{s.http}/api/v1/rooms/{'%2e' * 40}": 404,
            f"{s.http}/api/v1/rooms/{'r' * 65}": 404,
        }
        for url, status in odd.items():
            res = await http.get(url)
            assert res.status_code == status, (url, res.text)
            assert "code" in res.json()["error"]
        ahead = await http.get(f"{base}/{sid}/events?token={token}&since=99999")
        assert ahead.status_code == 200 and ahead.json()["events"] == []
        ok = await http.get(
            f"{base}/{sid}/transcript", params={"format": "txt", "lang": "en", "token": token}
        )
        assert ok.status_code == 200 and transcript_lines(ok.text) == ["Test utterance 0.10."]
