"""Behind a reverse proxy: forwarding headers are believed from ``--trusted-proxies`` only;
then the per-address limits, the Origin check and operator access see the real client.
A real scheduler on loopback; the test plays the proxy by sending the headers itself."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from linguamesh import protocol as p

from ..conftest import Cluster

INIT = json.dumps({"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "es"})


async def _session(
    url: str, headers: dict[str, str], origin: str | None = None
) -> tuple[ClientConnection, object]:
    ws = await connect(url + "/ws/session", additional_headers=headers, origin=origin)  # type: ignore[arg-type]
    try:
        await ws.send(INIT)
    except ConnectionClosed:  # refused at once: its error frame is still there to read
        pass
    return ws, p.decode_event(await ws.recv())


async def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(cluster: Cluster) -> None:
    s = await cluster.scheduler(max_connections_per_ip=1)
    first, ack = await _session(s.url, {"X-Forwarded-For": "203.0.113.1"})
    assert isinstance(ack, p.SessionInitAck)
    second, err = await _session(s.url, {"X-Forwarded-For": "203.0.113.2"})  # the same peer: over the limit
    assert isinstance(err, p.Error) and err.code == "rate_limited"
    assert dict(s.sched.admission.open) == {"127.0.0.1": 1}
    await first.close()
    await second.close()


async def test_behind_a_trusted_proxy_limits_apply_to_the_real_client(cluster: Cluster) -> None:
    s = await cluster.scheduler(max_connections_per_ip=1, trusted_proxies="127.0.0.1/32")
    a, ack_a = await _session(s.url, {"X-Forwarded-For": "203.0.113.1"})
    b, ack_b = await _session(s.url, {"X-Forwarded-For": "198.51.100.7, 203.0.113.2"})
    assert isinstance(ack_a, p.SessionInitAck) and isinstance(ack_b, p.SessionInitAck)
    c, err = await _session(s.url, {"Forwarded": "for=203.0.113.1;proto=https"})  # 203.0.113.1 again
    assert isinstance(err, p.Error) and err.code == "rate_limited"
    assert dict(s.sched.admission.open) == {"203.0.113.1": 1, "203.0.113.2": 1}
    session = next(
        x for x in s.sched.sessions.values() if x.delivery.conn is not None and x.peer == "203.0.113.2"
    )
    assert session.peer == "203.0.113.2"  # what the intake's limits and the logs use
    for ws in (a, b, c):
        await ws.close()


async def test_the_origin_check_uses_the_host_a_trusted_proxy_forwarded(cluster: Cluster) -> None:
    page = "https://events.example.org"
    fwd = {
        "X-Forwarded-For": "203.0.113.1",
        "X-Forwarded-Host": "events.example.org",
        "X-Forwarded-Proto": "https",
    }
    trusting = await cluster.scheduler(trusted_proxies="127.0.0.1")
    ws, ack = await _session(trusting.url, fwd, origin=page)  # nginx: Host without the port
    assert isinstance(ack, p.SessionInitAck)
    await ws.close()
    other = await cluster.scheduler()  # not trusted: the forwarded host counts for nothing
    with pytest.raises(InvalidStatus) as refused:
        await _session(other.url, fwd, origin=page)
    assert refused.value.response.status_code == 403


async def test_operator_data_is_not_open_to_requests_a_local_proxy_forwarded(cluster: Cluster) -> None:
    s = await cluster.scheduler(trusted_proxies="127.0.0.1")
    async with httpx.AsyncClient() as http:
        direct = await http.get(f"{s.http}/api/v1/nodes")  # the operator on the machine
        proxied = await http.get(f"{s.http}/api/v1/nodes", headers={"X-Forwarded-For": "203.0.113.1"})
    assert direct.status_code == 200
    assert proxied.status_code == 403 and proxied.json()["error"]["code"] == "unauthorized"
