"""The scheduler service: builds its parts, starts and stops them, and is the entry
point the socket handlers and the HTTP API call.

The parts (``docs/architecture.md`` shows how an utterance flows through them):

* :class:`~.nodes.registry.Registry` — node sockets: register, heartbeat, gone, send;
* :class:`~.jobs.dispatch.Dispatcher` — the waiting queue, selection + reservation,
  assign or hand-over;
* :class:`~.jobs.runner.Runner` — the only caller of the job lifecycle: jobs in flight,
  per-job locks, commands, timers, the end of a job, retrying the waiting jobs;
* :class:`~.sessions.table.SessionTable` — client sessions: open, resume, linger,
  close, events (each session's delivery is its pump);
* :class:`~.sessions.intake.Intake` — utterances become jobs;
* :class:`~.sessions.stream.UtteranceStream` — streamed ``audio_chunk``s become utterances;
* the remote — :class:`~.cluster.remote.NoRemote` for one instance,
  :class:`~.cluster.bridge.Bridge` when instances share Redis;
* :class:`~.shutdown.Shutdown` — the drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from .. import protocol as p
from ..core.ids import JobId, NodeId, SessionId
from ..core.jobs import Job
from ..core.lifecycle import Lifecycle
from ..core.nodes import servable_pairs, servable_targets
from ..core.overload import LagGauge
from ..observability.logging import get_logger
from ..observability.metrics import Metrics, model_stat_rows, register_model_metrics
from ..protocol import ErrorCode, ProtocolError
from ..state.base import DependencyDown, StateStore
from ..state.memory import MemoryStateStore
from ..state.redis import RedisStateStore
from . import overview
from .budget import MemoryBudget
from .cluster.bridge import Bridge, Parts
from .cluster.remote import NoRemote, Remote
from .cluster.watch import EventWatch
from .config import SchedulerConfig
from .edge.access_tokens import AccessToken, ApiKeys, TokenError
from .edge.admission import Admission
from .edge.credentials import NodeCredentials
from .edge.operator_tokens import operator_tokens
from .jobs.dispatch import Dispatcher, unserved_detail
from .jobs.runner import Runner
from .nodes.registry import NodeConn, Registry
from .records import limits
from .sessions.intake import Intake
from .sessions.session import Session, Speaker
from .sessions.stream import UtteranceStream
from .sessions.table import SessionTable
from .shutdown import Shutdown
from .tasks import Tasks
from .transport import Transport, close_quietly
from .webhooks import SessionEvents, Webhooks

#: /readyz answers within this (a stalled state store makes it 503, not a hung request)
READY_DEADLINE = 1.0

log = get_logger("linguamesh.scheduler")

__all__ = ["NodeConn", "Scheduler"]


class Scheduler:
    """The parts are made here in the order they depend on each other; each takes what it
    uses as constructor arguments. What a part reports (a node gone, capacity, the end of
    a streamed utterance's speech) comes back here as a return value and is routed on."""

    def __init__(self, config: SchedulerConfig, store: StateStore) -> None:
        self.config = config
        self.store = store
        self.clock = time.monotonic
        self.started_at = time.time()
        self.metrics = Metrics()
        self.tasks = Tasks()
        self.admission = Admission(config)
        self.lifecycle = Lifecycle(config.lifecycle())
        self.bridge = Bridge(config, store, self.tasks) if isinstance(store, RedisStateStore) else None
        remote: Remote = self.bridge if self.bridge is not None else NoRemote()
        #: the other instances (nobody, alone)
        self.remote = remote
        m, tasks, clock = self.metrics, self.tasks, self.clock
        credentials = NodeCredentials.load(config.node_token, config.node_tokens)
        #: API keys: who may speak and watch (``--api-keys``; none: anyone on loopback)
        self.api_keys = ApiKeys.load(config.api_keys)
        #: who may read operator data off loopback (``--operator-token``, ``--operator-token-file``)
        self.operator_tokens = operator_tokens(config.operator_token, config.operator_token_file)
        self.registry = Registry(config, store, remote, m, tasks, clock, credentials)
        self.dispatcher = Dispatcher(config, store, remote, m, clock, self.lifecycle.config, self.registry)
        #: signed webhooks to the operator's backend (``--webhook-url``)
        self.webhooks = Webhooks(config.webhook_url, config.instance_id, m, tasks)
        events = SessionEvents(self.webhooks, self._secret_of)
        self.table = SessionTable(
            config, store, remote, m, tasks, clock, self.init_ack, self._cancel_jobs, events
        )
        self.runner = Runner(
            config, store, remote, m, tasks, clock, self.lifecycle, self.dispatcher, self.registry, self.table
        )
        self.intake = Intake(config, store, m, clock, self.runner, self.table)
        self.intake.key_limits = lambda kid: dict(k.options) if (k := self.api_keys.keys.get(kid)) else {}
        self.stream = UtteranceStream(config, tasks, self.intake, self.registry, self.runner.kick, remote)
        #: viewers here of sessions other instances hold
        self.watch = EventWatch(store, tasks) if isinstance(store, RedisStateStore) else None
        self.shutdown = Shutdown(config, self.admission, self.registry, self.runner, self.table, self.bridge)
        self._sweeper: asyncio.Task[None] | None = None
        #: what in the state store's settings risks the shared state (``/readyz``)
        self.store_warnings: list[str] = []
        self._settings_checked = float("-inf")
        high = config.overload_lag_ms / 1000
        lag = LagGauge(high=high, low=high / 4) if high > 0 else None
        self.budget = MemoryBudget(config.memory_budget_mb * 1024 * 1024, self.held_bytes, self.clock, lag)
        self.stream.behind = self.budget.behind  # late chunks are then ours, not the speaker's
        self._register_gauges()

    # ------------------------------------------------------------------ views of the parts' state

    @property
    def sessions(self) -> dict[SessionId, Session]:
        return self.table.sessions

    @property
    def nodes(self) -> dict[NodeId, NodeConn]:
        return self.registry.nodes

    @property
    def jobs(self) -> dict[JobId, Job]:
        """The jobs in flight here (a snapshot)."""
        return {job_id: run.job for job_id, run in self.runner.runs.items()}

    def _register_gauges(self) -> None:
        m = self.metrics
        m.gauge("queue_depth", "Jobs waiting for a node", lambda: [({}, len(self.dispatcher.waiting))])
        m.gauge(
            "held_bytes",
            "Bytes of events held for clients (the memory budget's measure)",
            lambda: [({}, float(self.budget.held))],
        )
        m.gauge("jobs_in_flight", "Jobs not yet ended", lambda: [({}, len(self.runner.runs))])
        m.gauge(
            "event_loop_lag_seconds",
            "How late the event loop runs a timer, median of 5 ticks (new work is refused above LINGUAMESH_OVERLOAD_LAG_MS)",
            lambda: [({}, self.budget.lag.lag if self.budget.lag is not None else 0.0)],
        )
        m.gauge("connected_nodes", "Nodes connected to this instance", lambda: [({}, len(self.nodes))])
        m.gauge(
            "sessions",
            "Sessions on this instance, by whether a client socket is attached",
            lambda: [
                (
                    {"connected": "true"},
                    sum(1 for x in self.sessions.values() if x.delivery.conn is not None),
                ),
                ({"connected": "false"}, sum(1 for x in self.sessions.values() if x.delivery.conn is None)),
            ],
        )
        m.gauge(
            "node_slots",
            "Slots of connected nodes, by node and use",
            lambda: [
                row
                for v in self.store.nodes().all_nodes()
                for row in (
                    ({"node": v.node_id, "use": "reserved"}, float(v.reserved)),
                    ({"node": v.node_id, "use": "total"}, float(v.max_concurrent_jobs)),
                )
            ],
        )
        pairs_seen: set[str] = set()  # a pair whose nodes all left shows 0, not nothing

        def pair_rows(free: bool) -> list[tuple[dict[str, str], float]]:
            count: dict[str, float] = {}
            for v in self.store.nodes().all_nodes():
                for a, b in v.capabilities.servable_pairs():
                    if a != b:
                        pair = f"{a}-{b}"
                        count[pair] = count.get(pair, 0.0) + (max(0, v.free_slots) if free else 1.0)
            if len(pairs_seen) < 1000:
                pairs_seen.update(count)
            return [({"pair": pair}, count.get(pair, 0.0)) for pair in sorted(pairs_seen | set(count))]

        m.gauge("pair_nodes", "Nodes that serve a language pair end to end", lambda: pair_rows(False))
        m.gauge(
            "pair_free_slots", "Free slots of the nodes that serve a language pair", lambda: pair_rows(True)
        )
        m.gauge(
            "state_store_up",
            "1 when the last request to the shared state (Redis) succeeded; always 1 in memory",
            lambda: [({}, float(getattr(self.store, "up", True)))],
        )
        m.counter(
            "state_store_errors",
            "Requests to the shared state (Redis) that failed because it could not be reached",
            lambda: [({}, float(getattr(self.store, "errors", 0)))],
        )
        m.counter(
            "redis_round_trips",
            "Requests sent to Redis by this instance (a pipeline or a script counts once), by operation",
            lambda: [({"op": op}, float(n)) for op, n in getattr(self.store, "round_trips", {}).items()],
        )
        wire = getattr(self.store, "wire", None)
        if wire is not None and wire.replicas > 0:
            m.counter(
                "redis_unreplicated",
                "Times writes went on unconfirmed by a replica (a WAIT past --redis-wait-ms, or a check each second while replicas are away)",
                lambda: [({}, float(wire.unreplicated))],
            )

        def node_model_rows() -> dict[str, list[Any]]:  # reported by the nodes in heartbeats
            out: dict[str, list[Any]] = {}
            for nc in self.nodes.values():
                for stat, rows in model_stat_rows(nc.model_stats, {"node": nc.node_id}).items():
                    out.setdefault(stat, []).extend(rows)
            return out

        register_model_metrics(m, "node_", node_model_rows)

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        if self.config.exposed and not self.registry.credentials.configured:
            log.warning(
                "scheduler.insecure",
                host=self.config.host,
                message="reachable from other hosts with no node credentials (--insecure): "
                "any program can register as a node and receive users' audio",
            )
        self._sweeper = self.tasks.spawn(self._sweep(), "node-sweeper")
        if self.budget.lag is not None:
            self.tasks.spawn(self.budget.watch_lag(self._overloaded), "loop-lag")
        self.webhooks.start()
        await self._check_store_settings()
        if self.bridge is not None:
            answer = partial(overview.answer, self)
            await self.bridge.start(Parts(self.registry, self.runner, self.table, self.stream, answer))

    async def stop(self) -> None:
        """Stop, in the reverse order of :meth:`start`, every step bounded: the cluster (its
        relays get 2 s to write what they hold), the jobs' timers, the sessions' deliveries,
        then every task and timer left. Idempotent. The state store's connections are closed
        whatever happens before (a stop cancelled half way must not leak them)."""
        try:
            if self.bridge is not None:
                await self.bridge.stop()
            for run in self.runner.runs.values():
                run.disarm()
            await self.table.stop()
            await self.webhooks.stop()  # (what the sessions' ends queued gets its few seconds)
            await self.tasks.stop()
        finally:
            await self.store.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(self.config.heartbeat_interval, 1.0))
            await self.runner.retry_waiting()  # e.g. after the state store came back
            for nc in self.registry.silent():
                await self.node_gone(nc, "heartbeat lost")
                await close_quietly(nc.transport, 4002, "heartbeat lost")

    def _overloaded(self, now: bool) -> None:
        """The event loop fell behind (``now``), or caught up again: logged once each way."""
        lag = self.budget.lag
        assert lag is not None
        if now:
            log.warning(
                "scheduler.overloaded", lag_ms=round(lag.lag * 1000, 1), refuse_above_ms=lag.high * 1000
            )
            self.metrics.inc("overload_periods")
        else:
            log.info("scheduler.caught_up", lag_ms=round(lag.lag * 1000, 1))

    async def _cancel_jobs(self, job_ids: Iterable[JobId], reason: str) -> None:
        """A session was forgotten: its running jobs are cancelled."""
        await self.runner.cancel(job_ids, reason)

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        self.metrics.inc(name, n, **labels)

    def limits(self) -> p.Limits:
        return limits(self.config.max_message_bytes, self.config.max_utterance_seconds)

    # ------------------------------------------------------------------ /ws/session

    async def open_session(self, init: p.SessionInit, conn: Transport, peer: str = "") -> Session:
        self.budget.check()
        access = self.admit_speaker(init)
        who = None
        if access is not None:
            key = access.key
            who = Speaker(
                access.identity, key.key_id, key.options.get("max_sessions"), key.secret, access.grants.langs
            )
        return await self.table.open(init, conn, peer, who)

    def _secret_of(self, key_id: str) -> str | None:
        key = self.api_keys.keys.get(key_id)
        return key.secret if key is not None else None

    def admit_speaker(self, init: p.SessionInit) -> AccessToken | None:
        """With API keys, a new session needs an access token that grants ``speak`` (and,
        when its grants name them, this room and these languages); ``unauthorized``
        otherwise, and ``quota_exceeded`` past its key's ``max_targets``."""
        if not self.api_keys.enabled:
            return None
        if not init.token:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED,
                "an access token is needed (session_init.token, from the operator's backend)",
            )
        try:
            access = self.api_keys.verify(init.token)
        except TokenError as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"access token refused: {exc}") from None
        g = access.grants
        if not g.speak:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "the access token does not grant speak")
        if g.room is not None and init.room != g.room:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"the access token grants room {g.room!r} only")
        langs = {init.src_lang, init.tgt_lang, *init.extra_tgt_langs}
        if g.langs is not None and not langs <= g.langs:
            outside = ", ".join(sorted(langs - g.langs))
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"the access token does not grant {outside}")
        targets = len({init.tgt_lang, *init.extra_tgt_langs})
        most = access.key.options.get("max_targets")
        if most is not None and targets > most:
            raise ProtocolError(
                ErrorCode.QUOTA_EXCEEDED,
                f"key {access.key.key_id!r} allows {most} target languages (asked {targets})",
            )
        return access

    def reload(self) -> dict[str, Any]:
        """Read the API keys, node credentials and operator token files again (SIGHUP, or
        the operator's ``POST /api/v1/admin/reload``): a new key admits sessions at once, a
        removed one no new session; sessions already open stay open. A bad file changes
        nothing (all three are read before any is used)."""
        cfg = self.config
        keys = ApiKeys.load(cfg.api_keys)
        credentials = NodeCredentials.load(cfg.node_token, cfg.node_tokens)
        operators = operator_tokens(cfg.operator_token, cfg.operator_token_file)
        self.api_keys = keys
        self.registry.credentials = credentials
        self.operator_tokens = operators
        done = {
            "api_keys": len(keys.keys),
            "node_credentials": credentials.configured,
            "operator_tokens": len(operators),
        }
        log.info("scheduler.reloaded", **done)
        return done

    async def resume_session(self, info: p.ResumeInfo, conn: Transport) -> tuple[Session, int]:
        return await self.table.resume(info, conn)

    def init_ack(self, session: Session, replayed: int) -> bytes:
        return p.encode(
            p.SessionInitAck(
                session_id=session.session_id,
                trace_id=session.trace_id,
                resume_token=session.resume_token,
                view_token=session.view_token,
                limits=self.limits(),
                replayed=replayed,
                warnings=self._unserved(session),
            )
        )

    def _unserved(self, session: Session) -> list[p.ErrorInfo]:
        """The session's target languages no node serves now: said when the session opens
        or resumes, not 10 s after the first utterance (a node may still come: the
        utterances wait for one until the pending timeout)."""
        src = session.settings.src_lang
        servable = servable_targets(self.store.nodes().all_nodes(), src)
        missing = [t for t in session.settings.tgt_langs if t != src and t not in servable]
        if not missing:
            return []
        pools = self.store.nodes().pool_names()
        wait = f"{self.config.pending_timeout:g}"
        return [
            p.ErrorInfo(
                ErrorCode.NO_AVAILABLE_NODE,
                f"{unserved_detail(src, t, pools)}. Its utterances wait up to {wait} s for one, then fail: "
                "pick a language pair a node serves, or ask the operator to add one",
            )
            for t in missing
        ]

    async def utterance(self, session: Session, msg: p.Utterance) -> None:
        self._refuse_when_draining(f"utterance {msg.utterance_index}")
        self.budget.check(f"utterance {msg.utterance_index}")
        await self.intake.utterance(session, msg)

    async def audio_chunk(self, session: Session, msg: p.AudioChunk) -> None:
        self._refuse_when_draining(None)
        seg = session.utterances.segmenter
        u = session.utterances
        if u.overload_told is not None:
            # the rest of a refused utterance is refused with it (said once), up to its end
            # (is_final), or for at most the longest utterance (a client that never ends
            # one); with server-side end of speech (the client streams on and never ends
            # an utterance) only while the instance stays overloaded
            expired = self.clock() - u.overload_told_at > self.config.max_utterance_seconds or (
                session.settings.end_of_speech_ms is not None and self.budget.over() is None
            )
            if msg.is_final or expired:
                u.overload_told = None
            if msg.is_final or u.overload_told is not None:
                return
        if msg.audio and (seg is None or not seg.open):  # a chunk that would start an utterance
            reason = self.budget.over()
            if reason is not None:
                ref = f"utterance {u.max_index + 1}"
                if not msg.is_final:
                    u.overload_told, u.overload_told_at = ref, self.clock()
                raise ProtocolError(ErrorCode.OVERLOADED, reason, ref)
        await self.stream.audio_chunk(session, msg)

    def held_bytes(self) -> int:
        """Bytes of events this process holds for clients: sockets' backlogs, viewers'
        queues, and the memory store's windows and transcripts."""
        total = 0
        for s in self.sessions.values():
            d = s.delivery
            total += d.backlog + sum(q.bytes for q in d.subscribers)
        if self.watch is not None:
            total += self.watch.queued_bytes()
        if isinstance(self.store, MemoryStateStore):
            total += self.store.held_bytes()
        return total

    def _refuse_when_draining(self, ref: str | None) -> None:
        if self.shutdown.active:
            raise ProtocolError(
                ErrorCode.DRAINING,
                "the scheduler is shutting down: send it again after reconnecting",
                ref=ref,
            )

    async def ack_events(self, session: Session, seq: int) -> None:
        await self.table.ack_events(session, seq)

    async def close_session(self, session: Session, conn: Transport) -> None:
        await self.table.close(session)

    def connection_closed(self, session: Session, conn: Transport) -> None:
        self.table.connection_closed(session, conn)

    # ------------------------------------------------------------------ /ws/node

    async def register_node(self, msg: p.NodeRegister, conn: Transport) -> NodeConn:
        old = self.registry.admit(msg)
        if old is not None:  # the node's own token replaces its first connection
            await self.node_gone(old, "replaced by a new connection")
            await close_quietly(old.transport, 4001, "replaced by a new connection")
        nc = await self.registry.add(msg, conn, self.limits())
        self.runner.kick()
        return nc

    async def node_message(self, nc: NodeConn, msg: p.NodeMessage, frame: str = "") -> None:
        nc.last_seen = self.clock()
        if isinstance(msg, p.NodeHeartbeat):
            await self.registry.heartbeat(nc, msg)
            await self.runner.retry_waiting()
            return
        if isinstance(msg, p.NodeRegister):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "node is already registered")
        ended = await self.runner.node_message(nc.node_id, msg, frame)
        if ended is not None:  # a streamed utterance's speech ended: its stream closes it
            await self.stream.speech_end(ended.run, ended.size, ended.reason)

    async def node_gone(self, nc: NodeConn, why: str) -> None:
        """The node's socket is gone (closed, replaced, or silent): its jobs fail over."""
        runs = self.runner.jobs_on(nc.node_id)
        if not await self.registry.gone(nc):
            return
        # a node that stopped itself is news; one whose connection broke (a crash) is a warning
        (log.info if why == "closed by the node" else log.warning)(
            "node.gone", node_id=nc.node_id, why=why, jobs=len(runs)
        )
        await self.runner.node_lost(nc.node_id, runs)

    # ------------------------------------------------------------------ queries

    async def drain(self, timeout: float | None = None) -> bool:
        """SIGTERM: stop taking work, let what runs deliver, send everyone away (``shutdown.py``)."""
        return await self.shutdown.run(timeout)

    def degraded(self) -> list[str]:
        """What keeps the scheduler from serving while it still takes sessions (it stays ready:
        clients are accepted and their utterances wait for a node)."""
        try:
            connected = bool(self.store.nodes().all_nodes())
        except Exception:  # noqa: BLE001 - the store's problems are readiness problems, named there
            connected = True
        if not connected:
            return ["no node connected: sessions are accepted, utterances wait for a node"]
        return []

    async def _check_store_settings(self) -> None:
        """Warn (log, ``/readyz``'s ``warnings``) about Redis settings that risk the shared
        state; checked at start and then at most once a minute."""
        check = getattr(self.store, "config_warnings", None)
        if check is None:
            return
        self._settings_checked = self.clock()
        try:
            warnings = await check()
        except DependencyDown:
            return  # (readiness says why)
        for w in set(warnings) - set(self.store_warnings):
            log.warning("redis.settings_risky", warning=w)
        self.store_warnings = warnings

    async def readiness_problems(self) -> list[str]:
        if self.clock() - self._settings_checked >= 60.0:
            await self._check_store_settings()
        problems = []
        if self.shutdown.active:
            problems.append("draining: shutting down")
        if self._sweeper is None or self._sweeper.done():
            problems.append("scheduler loop is not running")
        if self.budget.lag is not None and (behind := self.budget.lag.reason()) is not None:
            problems.append(f"overloaded: {behind}")
        try:
            async with asyncio.timeout(READY_DEADLINE):  # a stalled store: answer 503 in time
                await self.store.ping()
        except TimeoutError:
            problems.append(f"state store unreachable: no answer within {READY_DEADLINE:g}s")
            if hasattr(self.store, "up"):
                self.store.up = False  # the ping was cancelled before the link saw it fail
        except Exception as exc:  # noqa: BLE001 - any failure of the store makes us not ready; it is reported
            problems.append(f"state store unreachable: {exc}")
        return problems

    def job_view(self, job_id: str) -> dict[str, Any] | None:
        """A job this instance runs or ran recently (``overview.job_view``)."""
        return overview.job_view(self, job_id)

    def servable_pairs(self) -> list[tuple[str, str]]:
        return sorted(servable_pairs(self.store.nodes().all_nodes()))
