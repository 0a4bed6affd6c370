"""Graceful drain: what a scheduler does between SIGTERM and its exit.

1. It stops taking new sockets (sessions, resumes, nodes get ``draining`` and close
   1013) and ``/readyz`` answers 503 at once.
2. In a cluster (Redis), every client is told to ``reconnect`` and its socket closed
   (1012): it resumes on another instance, which claims the session and delivers every
   event from the shared history — including the results of the jobs still finishing
   here. On one instance the clients stay: their results have nowhere else to go; new
   utterances are refused with ``draining`` (the client sends them again once it is back).
3. It waits, at most ``drain_timeout``, until no job runs here and every result is in
   its session's history (relays flushed) and, on one instance, written to its client.
4. Nodes and the clients still here get ``reconnect`` and are closed (1012); the
   process exits. A second signal skips the wait (see ``runtime.py``).
"""

from __future__ import annotations

import asyncio
import time

from .. import protocol as p
from ..observability.logging import get_logger
from .cluster.bridge import Bridge
from .config import SchedulerConfig
from .edge.admission import SERVICE_RESTART, Admission
from .jobs.runner import Runner
from .nodes.registry import Registry
from .sessions.table import SessionTable
from .transport import close_quietly

log = get_logger("linguamesh.scheduler")


class Shutdown:
    def __init__(
        self,
        config: SchedulerConfig,
        admission: Admission,
        registry: Registry,
        runner: Runner,
        table: SessionTable,
        bridge: Bridge | None,
    ) -> None:
        self.config = config
        self.admission = admission
        self.registry = registry
        self.runner = runner
        self.table = table
        self.bridge = bridge
        self.started: float | None = None

    @property
    def active(self) -> bool:
        return self.started is not None

    def hint(self) -> p.Reconnect:
        return p.Reconnect(
            delay_ms=self.config.reconnect_delay_ms, reason="draining", url=self.config.reconnect_url
        )

    async def run(self, timeout: float | None = None) -> bool:
        """Drain; True when every job here delivered within the timeout."""
        if self.started is not None:
            return False
        self.started = time.monotonic()
        limit = self.config.drain_timeout if timeout is None else timeout
        self.admission.draining = True
        log.warning(
            "scheduler.draining",
            jobs=len(self.runner.runs),
            sessions=len(self.table.sessions),
            nodes=len(self.registry.nodes),
            timeout_s=limit,
        )
        if self.bridge is not None:  # the clients go on on another instance at once
            await self._send_clients_away()
        done = await self._wait_for_jobs(limit)
        await self._send_clients_away()
        for nc in list(self.registry.nodes.values()):
            await nc.send(self.hint())
            await close_quietly(nc.transport, SERVICE_RESTART, "draining")
        log.warning(
            "scheduler.drained",
            complete=done,
            jobs_left=len(self.runner.runs),
            seconds=round(time.monotonic() - self.started, 3),
        )
        return done

    async def _send_clients_away(self) -> None:
        hint = p.encode_str(self.hint())
        for session in list(self.table.sessions.values()):
            conn = session.delivery.conn
            if conn is None:
                continue
            await session.delivery.flush()  # what is queued for the client goes first
            session.delivery.detach(conn)
            try:
                async with asyncio.timeout(2.0):
                    await conn.send_text(hint)
            except Exception:  # noqa: BLE001 - a socket already gone: it reconnects by itself
                pass
            await close_quietly(conn, SERVICE_RESTART, "draining")

    async def _wait_for_jobs(self, limit: float) -> bool:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if not self.runner.runs:
                remaining = max(0.1, end - time.monotonic())
                for session in list(self.table.sessions.values()):  # results into the histories
                    try:
                        await asyncio.wait_for(session.delivery.flush(), remaining)
                    except TimeoutError:
                        return False
                if self.bridge is not None:
                    for relay in list(self.bridge.relays.values()):
                        await relay.flushed(timeout=max(0.1, end - time.monotonic()))
                return True
            await asyncio.sleep(0.05)
        return False
