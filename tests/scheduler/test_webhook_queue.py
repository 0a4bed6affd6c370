"""The webhook queue against a real HTTP receiver on loopback: what is tried again, what
is final, what a full queue drops, what a stop leaves unsent."""

from __future__ import annotations

import asyncio

import pytest

from linguamesh.observability.metrics import Metrics
from linguamesh.scheduler import webhooks
from linguamesh.scheduler.tasks import Tasks
from linguamesh.scheduler.webhooks import Webhooks, backoff

from ..webhook_receiver import WebhookReceiver, verified

SECRET = "s" * 40


def counted(metrics: Metrics, outcome: str) -> float:
    return metrics.value("webhooks", outcome=outcome)


async def queue(url: str | None) -> tuple[Webhooks, Metrics, Tasks]:
    metrics, tasks = Metrics(), Tasks()
    hooks = Webhooks(url, "i-1", metrics, tasks)
    hooks.start()
    return hooks, metrics, tasks


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff(40) == webhooks.MAX_DELAY


async def test_a_refusal_is_final_a_server_error_is_tried_until_the_attempts_run_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhooks, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(webhooks, "ATTEMPTS", 3)
    with WebhookReceiver(statuses=[400, 500, 500, 500, 429]) as receiver:
        hooks, metrics, tasks = await queue(receiver.url)
        hooks.emit("session_started", "k1", SECRET, {"n": 1})  # 400: final at once
        await hooks.stop(drain=10)
        assert [r.status for r in receiver.received] == [400]
        hooks.start()
        hooks.emit("session_ended", "k1", SECRET, {"n": 2})  # 500 three times: given up
        await hooks.stop(drain=10)
        hooks.start()
        hooks.emit("session_ended", "k1", SECRET, {"n": 3})  # 429 then taken
        await hooks.stop(drain=10)
        await tasks.stop()
    assert [r.status for r in receiver.received] == [400, 500, 500, 500, 429, 200]
    assert counted(metrics, "failed") == 2 and counted(metrics, "delivered") == 1
    assert counted(metrics, "retried") == 3
    taken = receiver.taken()[0]
    assert verified(taken, {"k1": SECRET})["n"] == 3


async def test_an_unreachable_receiver_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(webhooks, "ATTEMPTS", 2)
    with WebhookReceiver() as receiver:
        url = receiver.url
    hooks, metrics, tasks = await queue(url)  # nobody listens there any more
    hooks.emit("session_started", "k1", SECRET, {})
    await hooks.stop(drain=10)
    await tasks.stop()
    assert counted(metrics, "retried") == 1 and counted(metrics, "failed") == 1


async def test_a_full_queue_drops_its_oldest_and_a_stop_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "QUEUE_LIMIT", 3)
    with WebhookReceiver(hang=2) as receiver:
        hooks, metrics, tasks = await queue(receiver.url)
        await asyncio.sleep(0)
        for n in range(webhooks.SENDERS + 5):  # the senders take 4, 3 wait, 2 are dropped
            hooks.emit("session_started", "k1", SECRET, {"n": n})
            await asyncio.sleep(0.01)
        assert counted(metrics, "dropped") == 2
        assert [x.body.count(b'"n":') for x in hooks.queue] == [1, 1, 1]
        await hooks.stop(drain=0.2)  # not enough: what is left is logged, the stop ends
        await tasks.stop()


async def test_without_a_url_nothing_is_queued() -> None:
    hooks, _, tasks = await queue(None)
    hooks.emit("session_started", "k1", SECRET, {})
    assert not hooks.enabled and not hooks.queue
    await hooks.stop()
    await tasks.stop()
