"""Signed webhooks (``--webhook-url``) from a real scheduler process to a receiver on
loopback: what an operator's backend gets, verified with PyJWT alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import jwt
import pytest

from linguamesh.client import SessionClient
from linguamesh.scheduler.config import SchedulerConfig

from ..conftest import SCALE, pcm
from ..fleet import Fleet
from ..webhook_receiver import Received, WebhookReceiver, verified
from .test_access_tokens import S1, S2, token

SECRETS = {"k1": S1, "k2": S2}


async def taken(receiver: WebhookReceiver, count: int, timeout: float = 30.0) -> list[Received]:
    deadline = time.monotonic() + timeout * SCALE
    while len(receiver.taken()) < count:
        assert time.monotonic() < deadline, [r.event for r in receiver.received]
        await asyncio.sleep(0.1)
    return receiver.taken()


async def test_sessions_of_a_key_post_signed_webhooks_with_their_usage(tmp_path: Path) -> None:
    """session_started and session_ended (closed, and expired: nobody came back), each
    signed with its own key's secret and carrying the body's hash; a 503 is tried again
    (same event id); what a session used, as the shared store counted it."""
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {S1}\nk2 {S2}\n")
    with WebhookReceiver(statuses=[503]) as receiver:
        async with Fleet(tmp_path, redis=True) as fleet:
            s = await fleet.scheduler(
                "A", "--api-keys", str(keys), "--webhook-url", receiver.url, "--session-linger", "1"
            )
            fleet.node("n1", [s.url], delay_ms=0)
            await fleet.wait_node("A", "n1")
            alice = SessionClient(s.url, src="en", tgt="es")
            alice.init.token = token("k1", S1)
            await alice.connect()
            for i in range(2):
                await alice.send_utterance(i, pcm(0.5))
            for _ in range(2):
                assert (await alice.next_result(10 * SCALE)).status == "ok"
            await alice.close_session()
            await alice.wait_closed()
            bob = SessionClient(s.url, src="en", tgt="es")
            bob.init.token = token("k2", S2, sub="bob")
            await bob.connect()
            await bob.disconnect()  # never comes back: the session expires after its linger

            hooks = await taken(receiver, 4)
            events = [verified(h, SECRETS) for h in hooks]
            by = {(e["session"]["identity"], e["event"]): e for e in events}
            assert sorted(by) == [("alice", "session_ended"), ("alice", "session_started"),
                                  ("bob", "session_ended"), ("bob", "session_started")]  # fmt: skip
            ended = by[("alice", "session_ended")]
            assert ended["reason"] == "client_closed"
            assert ended["session"]["session_id"] == alice.session_id and ended["session"]["key_id"] == "k1"
            assert ended["session"]["tgt_langs"] == ["es"]
            assert ended["usage"]["utterances"] == 2 and ended["usage"]["jobs"] == 2
            assert isinstance(ended["usage"]["utterances"], int)
            assert ended["usage"]["audio_seconds"] == pytest.approx(1.0, abs=0.01)
            assert by[("bob", "session_ended")]["reason"] == "expired"
            assert by[("bob", "session_ended")]["usage"]["utterances"] == 0
            assert len({e["id"] for e in events}) == 4
            # the 503 was tried again: the same webhook (its id) came twice
            first = receiver.received[0]
            assert first.status == 503 and first.event["id"] in {e["id"] for e in events}
            for h in hooks:
                assert h.headers["content-type"] == "application/webhook+json"
                # bob's come signed with k2's secret, not k1's
                iss = jwt.decode(h.headers["authorization"], options={"verify_signature": False})["iss"]
                assert iss == ("k2" if h.event["session"]["identity"] == "bob" else "k1")
                with pytest.raises(jwt.InvalidSignatureError):
                    verified(h, {"k1": S2, "k2": S1})
                # a changed body shows
                with pytest.raises(ValueError, match="does not match"):
                    verified(Received(h.headers, h.body.replace(b'"usage"', b'"Usage"') + b" ", 200), SECRETS)
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{s.http}/metrics")).text
            assert 'linguamesh_webhooks_total{event="session_started",outcome="retried"} 1.0' in metrics
            assert 'linguamesh_webhooks_total{event="session_ended",outcome="delivered"} 2.0' in metrics


async def test_a_receiver_that_hangs_holds_no_session_up(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {S1}\n")
    with WebhookReceiver(hang=60) as receiver:
        async with Fleet(tmp_path, redis=False) as fleet:
            s = await fleet.scheduler("A", "--api-keys", str(keys), "--webhook-url", receiver.url)
            fleet.node("n1", [s.url], delay_ms=0)
            await fleet.wait_node("A", "n1")
            for n in range(3):
                c = SessionClient(s.url, src="en", tgt="es")
                c.init.token = token("k1", S1)
                await c.connect()
                await c.send_utterance(0, pcm(0.2))
                assert (await c.next_result(10 * SCALE)).status == "ok", n
                await c.close_session()
                await c.wait_closed()
            assert not receiver.taken()  # (all still hanging)


def test_webhooks_need_api_keys_and_an_http_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--webhook-url needs --api-keys"):
        SchedulerConfig.from_env(webhook_url="http://127.0.0.1:9/hooks")
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {S1}\n")
    with pytest.raises(ValueError, match="http:// or https://"):
        SchedulerConfig.from_env(webhook_url="ftp://example/hooks", api_keys=str(keys))
