"""Signed webhooks: the operator's backend hears when its keys' sessions start and end.

``--webhook-url URL``: for each session opened with an access token, a ``POST`` of
``session_started`` when it opens and ``session_ended`` (with what it used) when it
ends, on whichever instance it ends. Signed like LiveKit's webhooks: the body's SHA-256
(base64) travels in a JWT signed HS256 with the secret of the session's API key, in the
``Authorization`` header; the receiver recomputes the hash and verifies the token with
the key it gave out (a changed body or a wrong secret shows).

A webhook never blocks a session: :meth:`Webhooks.emit` only queues. A few senders post
the queue; a failed post (a network error, a 5xx, a 408 or 429) is tried again with
exponential backoff, :data:`ATTEMPTS` times in all; a 4xx other than those is final. The
queue is bounded (:data:`QUEUE_LIMIT`): past it the oldest waiting webhook is dropped,
logged and counted. Webhooks live in the memory of the instance that sends them: an
instance killed before it posted one does not post it (a SIGTERM gives the queue
:data:`DRAIN_SECONDS`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import jwt

from ..observability.logging import get_logger
from ..observability.metrics import Metrics
from .tasks import Tasks, stop_if_cancelled

if TYPE_CHECKING:
    from .sessions.session import Session

log = get_logger("linguamesh.scheduler")

#: Posts of one webhook in all, the wait before the second, and the longest wait.
ATTEMPTS = 6
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
#: Webhooks that may wait; past it the oldest is dropped.
QUEUE_LIMIT = 10_000
#: Concurrent posts (one slow receiver does not hold every webhook up).
SENDERS = 4
#: Seconds a post may take.
POST_TIMEOUT = 10.0
#: Seconds a draining instance gives its queue.
DRAIN_SECONDS = 5.0
#: Seconds a webhook's signature stays valid (the receiver should refuse older ones).
SIGNATURE_TTL = 300
CONTENT_TYPE = "application/webhook+json"
RETRY_STATUSES = frozenset({408, 429})


def body_hash(body: bytes) -> str:
    """The ``sha256`` claim: the body's SHA-256, standard base64 (as LiveKit's)."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def sign(body: bytes, key_id: str, secret: str, now: float | None = None) -> str:
    """The ``Authorization`` header's token for ``body``."""
    issued = int(now if now is not None else time.time())
    claims = {"iss": key_id, "iat": issued, "exp": issued + SIGNATURE_TTL, "sha256": body_hash(body)}
    return jwt.encode(claims, secret, algorithm="HS256")


def backoff(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th failed post (1, 2, ...)."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** (attempt - 1)))


@dataclass(slots=True)
class Webhook:
    event: str
    key_id: str
    #: the key's secret when the webhook was made (a key removed since still signs it)
    secret: str
    body: bytes
    attempts: int = 0


class Webhooks:
    """The queue and its senders. ``url`` None: nothing is queued or sent."""

    def __init__(self, url: str | None, instance_id: str, metrics: Metrics, tasks: Tasks) -> None:
        self.url = url
        self.instance_id = instance_id
        self.metrics = metrics
        self.tasks = tasks
        self.queue: deque[Webhook] = deque()
        self._ready = asyncio.Event()
        #: set while nothing is queued or being posted
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self._client: httpx.AsyncClient | None = None
        self._senders: list[asyncio.Task[None]] = []

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def start(self) -> None:
        if self.url is None:
            return
        self._client = httpx.AsyncClient(timeout=POST_TIMEOUT, follow_redirects=False)
        self._senders = [self.tasks.spawn(self._send_loop(), f"webhooks-{n}") for n in range(SENDERS)]

    async def stop(self, drain: float = DRAIN_SECONDS) -> None:
        """Give what is queued ``drain`` seconds, then stop the senders."""
        if self._client is None:
            return
        try:
            async with asyncio.timeout(drain):
                await self._idle.wait()
        except TimeoutError:
            log.warning("webhook.unsent", queued=len(self.queue) + self._busy)
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        await self._client.aclose()
        self._client = None

    def emit(self, event: str, key_id: str, secret: str, fields: dict[str, Any]) -> None:
        """Queue a webhook (never waits). ``fields`` join the event's ``id``, ``event``,
        ``created_at`` (epoch seconds) and ``instance_id``."""
        if self.url is None:
            return
        payload = {
            "id": uuid.uuid4().hex,
            "event": event,
            "created_at": round(time.time(), 3),
            "instance_id": self.instance_id,
            **fields,
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        if len(self.queue) >= QUEUE_LIMIT:
            dropped = self.queue.popleft()
            self.metrics.inc("webhooks", event=dropped.event, outcome="dropped")
            log.warning(
                "webhook.dropped", webhook_event=dropped.event, key_id=dropped.key_id, queued=QUEUE_LIMIT
            )
        self.queue.append(Webhook(event, key_id, secret, body))
        self._idle.clear()
        self._ready.set()

    async def _send_loop(self) -> None:
        while True:
            stop_if_cancelled()
            if not self.queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            hook = self.queue.popleft()
            self._busy += 1
            try:
                await self._deliver(hook)
            finally:
                self._busy -= 1
                if not self.queue and not self._busy:
                    self._idle.set()

    async def _deliver(self, hook: Webhook) -> None:
        """Post ``hook`` until it is taken, refused for good, or out of attempts."""
        assert self._client is not None and self.url is not None
        while True:
            hook.attempts += 1
            headers = {
                "Content-Type": CONTENT_TYPE,
                "Authorization": sign(hook.body, hook.key_id, hook.secret),
            }
            try:
                answer = await self._client.post(self.url, content=hook.body, headers=headers)
                status, problem = answer.status_code, f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                status, problem = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                self.metrics.inc("webhooks", event=hook.event, outcome="delivered")
                log.info(
                    "webhook.delivered", webhook_event=hook.event, key_id=hook.key_id, attempts=hook.attempts
                )
                return
            final = 400 <= status < 500 and status not in RETRY_STATUSES
            if final or hook.attempts >= ATTEMPTS:
                self.metrics.inc("webhooks", event=hook.event, outcome="failed")
                log.error(
                    "webhook.failed", webhook_event=hook.event, key_id=hook.key_id, attempts=hook.attempts,
                    error=problem,
                )  # fmt: skip
                return
            self.metrics.inc("webhooks", event=hook.event, outcome="retried")
            delay = backoff(hook.attempts)
            log.warning(
                "webhook.retry", webhook_event=hook.event, key_id=hook.key_id, attempts=hook.attempts,
                error=problem, retry_in=delay,
            )  # fmt: skip
            await asyncio.sleep(delay)


class SessionEvents:
    """The session webhooks: what a session of an API key tells its operator's backend."""

    def __init__(self, webhooks: Webhooks, secret_of: Callable[[str], str | None]) -> None:
        self.webhooks = webhooks
        #: the key's secret as configured now (None: the key was removed since)
        self.secret_of = secret_of

    def started(self, session: Session) -> None:
        self._emit("session_started", session, {})

    def ended(self, session: Session, reason: str, usage: dict[str, float]) -> None:
        """``reason``: ``client_closed`` (the speaker closed it) or ``expired`` (nobody
        came back within the linger)."""
        used: dict[str, float | int] = {
            "utterances": int(usage.get("utterances", 0)),
            "jobs": int(usage.get("jobs", 0)),
            "audio_seconds": round(usage.get("audio_seconds", 0.0), 3),
        }
        started = session.settings.started_at
        fields = {
            "reason": reason,
            "duration_seconds": round(max(0.0, time.time() - started), 3),
            "usage": used,
        }
        self._emit("session_ended", session, fields)

    def _emit(self, event: str, session: Session, fields: dict[str, Any]) -> None:
        st = session.settings
        if not self.webhooks.enabled or st.key_id is None:
            return
        secret = self.secret_of(st.key_id) or session.key_secret
        if secret is None:  # a session taken over after its key was removed: nothing to sign with
            log.warning(
                "webhook.unsigned", webhook_event=event, key_id=st.key_id, session_id=session.session_id
            )
            return
        described = {
            "session": {
                "session_id": session.session_id,
                "trace_id": session.trace_id,
                "identity": st.identity,
                "key_id": st.key_id,
                "room": st.room,
                "src_lang": st.src_lang,
                "tgt_langs": st.tgt_langs,
                "started_at": st.started_at,
            },
            **fields,
        }
        self.webhooks.emit(event, st.key_id, secret, described)
