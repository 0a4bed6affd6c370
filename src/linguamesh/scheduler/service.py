"""The dispatcher service: the shell around the sans-I/O core.

It owns sessions, node connections, timers and the job table; it feeds every
event to :class:`~linguamesh.core.lifecycle.Lifecycle` and carries out the
commands it returns. Each job's events are handled under that job's lock,
so a node's ``job_ack`` cannot overtake the finish of the ``job_assign``
write that it answers.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import random
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .. import protocol as p
from ..audio import BadAudio, duration_seconds
from ..core.history import ReplayGap
from ..core.ids import JobId, NodeId, SessionId, TraceId, new_job_id, new_session_id, new_token, new_trace_id
from ..core.jobs import Job, JobState
from ..core.languages import pair_problem
from ..core.lifecycle import (
    AckResult,
    Arm,
    Assign,
    Cancel,
    Command,
    Disarm,
    Finish,
    Lifecycle,
    Note,
    Release,
    Select,
    Status,
    TimerKind,
)
from ..core.nodes import NodeCapabilities, NodeView
from ..core.selection import SELECTORS, Request
from ..core.stages import expand_stages, requirements
from ..observability.logging import bound, get_logger
from ..observability.metrics import MODEL_STATS, Metrics, model_stat_rows
from ..protocol import ErrorCode, ProtocolError
from ..state.base import DependencyDown, Handover, JobEnd, JobRecord, Notify, SessionRecord, StateStore
from ..state.redis import RedisStateStore
from .cluster import Cluster
from .config import SchedulerConfig
from .sessions import Session, SessionRelay, SessionSettings, Transport, until_available

log = get_logger("linguamesh.scheduler")

FINISHED_JOBS_KEPT = 10_000
#: A socket write that takes longer than this means the peer is gone.
SEND_TIMEOUT = 10.0


def job_fields(job: Job) -> dict[str, Any]:
    return {
        "trace_id": job.trace_id,
        "session_id": job.session_id,
        "job_id": job.job_id,
        "node_id": job.node_id,
        "utterance_index": job.utterance_index,
        "attempt_id": job.attempt_id,
    }


@dataclass(eq=False)
class NodeConn:
    node_id: NodeId
    transport: Transport
    version: str
    models: list[p.ModelInfo]
    hardware: dict[str, Any] | None
    connected_at: float
    last_seen: float
    jobs: set[JobId] = field(default_factory=set)
    model_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    async def send(self, msg: msgspec.Struct) -> bool:
        """Write one message; True only when the write finished."""
        if self.closed:
            return False
        data = p.encode_str(msg)
        try:
            async with self.lock, asyncio.timeout(SEND_TIMEOUT):
                await self.transport.send_text(data)
            return True
        except Exception:
            return False


@dataclass(slots=True)
class JobExtra:
    """Per-job data the core does not need."""

    tts: bool
    partials: bool
    lock: asyncio.Lock
    timers: list[asyncio.TimerHandle]
    first_selection: bool = True
    #: partial transcripts are sent once per utterance: by the job of the first target language
    first_tgt: bool = True
    #: a slot to release together with the job's final record (cluster mode)
    pending_release: tuple[NodeId, int] | None = None


class Scheduler:
    def __init__(self, config: SchedulerConfig, store: StateStore) -> None:
        self.config = config
        self.store = store
        self.lifecycle = Lifecycle(config.lifecycle())
        self.select = SELECTORS[config.selector]
        self.rng = random.Random()
        self.clock = time.monotonic
        self.started_at = time.time()
        self.sessions: dict[SessionId, Session] = {}
        #: events for sessions held by other instances, produced by jobs handed over to us
        self.relays: dict[SessionId, SessionRelay] = {}
        self.nodes: dict[NodeId, NodeConn] = {}
        self.jobs: dict[JobId, Job] = {}
        self.extra: dict[JobId, JobExtra] = {}
        self.finished: OrderedDict[JobId, Job] = OrderedDict()
        #: the last failed jobs, newest last, for the operator page
        self.failures: deque[dict[str, Any]] = deque(maxlen=200)
        self.waiting: OrderedDict[JobId, None] = OrderedDict()
        self.metrics = Metrics()
        self._register_gauges()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.cluster: Cluster | None = None
        if isinstance(store, RedisStateStore):
            self.cluster = Cluster(self, store)

    def _register_gauges(self) -> None:
        m = self.metrics
        m.gauge("queue_depth", "Jobs waiting for a node", lambda: [({}, len(self.waiting))])
        m.gauge("jobs_in_flight", "Jobs not yet ended", lambda: [({}, len(self.jobs))])
        m.gauge("connected_nodes", "Nodes connected to this instance", lambda: [({}, len(self.nodes))])
        m.gauge(
            "sessions",
            "Sessions on this instance, by whether a client socket is attached",
            lambda: [
                ({"connected": "true"}, sum(1 for x in self.sessions.values() if x.conn is not None)),
                ({"connected": "false"}, sum(1 for x in self.sessions.values() if x.conn is None)),
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
        m.gauge(
            "redis_round_trips",
            "Requests sent to Redis by this instance (a pipeline or a script counts once), by operation",
            lambda: [({"op": op}, float(n)) for op, n in getattr(self.store, "round_trips", {}).items()],
        )
        for stat in MODEL_STATS:
            m.gauge(
                f"node_model_{stat}",
                f"Per-model {stat.replace('_', ' ')} reported by nodes in heartbeats",
                lambda stat=stat: [  # type: ignore[misc]
                    row
                    for nc in self.nodes.values()
                    for row in model_stat_rows(nc.model_stats, {"node": nc.node_id}).get(stat, [])
                ],
            )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._sweeper = self._spawn(self._sweep(), "node-sweeper")
        if self.cluster is not None:
            await self.cluster.start()

    async def stop(self) -> None:
        """Stop timers and tasks. Idempotent."""
        for relay in list(self.relays.values()):  # finished results go into their histories first
            await relay.drained(timeout=2.0)
        if self.cluster is not None:
            await self.cluster.stop()
        for extra in self.extra.values():
            for t in extra.timers:
                t.cancel()
        for s in list(self.sessions.values()):
            await s.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        # a fresh context: a task must not inherit the log context (job ids) of its spawner
        task = asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task.crashed", task=task.get_name(), error=repr(task.exception()))

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        self.metrics.inc(name, n, **labels)

    def limits(self) -> p.Limits:
        return p.Limits(
            max_message_bytes=self.config.max_message_bytes,
            max_utterance_seconds=self.config.max_utterance_seconds,
        )

    # ------------------------------------------------------------------ sessions

    async def open_session(self, init: p.SessionInit, conn: Transport) -> Session:
        p.check_version(init.protocol_version)
        tgts = [init.tgt_lang] + [t for t in dict.fromkeys(init.extra_tgt_langs) if t != init.tgt_lang]
        for tgt in tgts:
            problem = pair_problem(init.src_lang, tgt)
            if problem:
                raise ProtocolError(ErrorCode.UNSUPPORTED_LANGUAGE_PAIR, problem)
        if init.sample_rate <= 0 or init.sample_rate > 192_000:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"sample_rate {init.sample_rate} is out of range")
        settings = SessionSettings(
            src_lang=init.src_lang,
            tgt_langs=tgts,
            tts=init.tts,
            partials=init.partials,
            audio_format=init.audio_format,
            sample_rate=init.sample_rate,
            preferred_node_id=init.preferred_node_id,
        )
        session = Session(
            session_id=new_session_id(),
            trace_id=new_trace_id(),
            resume_token=new_token(),
            view_token=new_token(),
            settings=settings,
            store=self.store,
            on_detached=self._session_detached,
            on_delivered=lambda: self.count("results_delivered"),
            on_result=self._session_result,
        )
        await self.store.create_session(self._record(session), self.config.session_linger * 2)
        self.sessions[session.session_id] = session
        session.start()
        session.conn = conn
        self.count("sessions_created")
        log.info(
            "session.created",
            trace_id=session.trace_id,
            session_id=session.session_id,
            src_lang=init.src_lang,
            tgt_lang=init.tgt_lang,
            extra_tgt_langs=tgts[1:],
        )
        return session

    def _job_record(
        self, job: Job, tts: bool, partials: bool, deadline: float, *, with_data: bool = False
    ) -> JobRecord:
        data = job_data(job, tts, partials) if with_data else {}
        if with_data:
            data["excluded"] = sorted(job.excluded)
        return JobRecord(
            job_id=job.job_id,
            owner=self.config.instance_id,
            state=job.state.value,
            attempt_id=job.attempt_id,
            node_id=job.node_id,
            deadline=deadline,
            data=data,
        )

    def _record(self, session: Session) -> SessionRecord:
        st = session.settings
        return SessionRecord(
            session_id=session.session_id,
            trace_id=session.trace_id,
            resume_token=session.resume_token,
            view_token=session.view_token,
            settings={
                "src_lang": st.src_lang,
                "tgt_langs": st.tgt_langs,
                "tts": st.tts,
                "partials": st.partials,
                "audio_format": st.audio_format,
                "sample_rate": st.sample_rate,
                "preferred_node_id": st.preferred_node_id,
            },
            owner=self.config.instance_id,
            max_index=session.max_index,
        )

    def init_ack(self, session: Session, replayed: int) -> bytes:
        return p.encode(
            p.SessionInitAck(
                session_id=session.session_id,
                trace_id=session.trace_id,
                resume_token=session.resume_token,
                view_token=session.view_token,
                limits=self.limits(),
                replayed=replayed,
            )
        )

    async def resume_session(self, info: p.ResumeInfo, conn: Transport) -> tuple[Session, int]:
        session = self.sessions.get(SessionId(info.session_id))
        if (session is None or session.closed) and self.cluster is not None:
            session = await self._take_session(SessionId(info.session_id), info.resume_token)
        if session is None or session.closed:
            raise ProtocolError(
                ErrorCode.SESSION_NOT_FOUND,
                f"session {info.session_id} does not exist or has expired",
            )
        if not _same_token(session.resume_token, info.resume_token):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "resume_token does not match")
        old = session.conn
        if old is not None:
            session.conn = None
            await _close_quietly(old, 4000, "resumed elsewhere")
        try:
            replayed = await session.attach(conn, info.last_seq, lambda n: self.init_ack(session, n))
        except ReplayGap as exc:
            raise ProtocolError(ErrorCode.SESSION_NOT_FOUND, f"cannot resume: {exc}") from None
        if session.linger_timer is not None:
            session.linger_timer.cancel()
            session.linger_timer = None
        self.count("sessions_resumed")
        self.count("events_replayed", replayed)
        log.info(
            "session.resumed",
            trace_id=session.trace_id,
            session_id=session.session_id,
            last_seq=info.last_seq,
            replayed=replayed,
        )
        return session, replayed

    async def _take_session(self, session_id: SessionId, token: str) -> Session | None:
        """Resume here a session another instance held (it moved, or that instance died)."""
        assert self.cluster is not None
        rec = await self.store.load_session(session_id)
        if rec is None:
            return None
        if not _same_token(rec.resume_token, token):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "resume_token does not match")
        prev = await self.store.claim_session(
            session_id, self.config.instance_id, self.config.session_linger * 2
        )
        st = rec.settings
        session = Session(
            session_id=session_id,
            trace_id=TraceId(rec.trace_id),
            resume_token=rec.resume_token,
            view_token=rec.view_token,
            settings=SessionSettings(
                src_lang=st["src_lang"],
                tgt_langs=list(st["tgt_langs"]),
                tts=bool(st["tts"]),
                partials=bool(st["partials"]),
                audio_format=st["audio_format"],
                sample_rate=int(st["sample_rate"]),
                preferred_node_id=st.get("preferred_node_id"),
            ),
            store=self.store,
            on_detached=self._session_detached,
            on_delivered=lambda: self.count("results_delivered"),
            on_result=self._session_result,
            max_index=rec.max_index,
        )
        self.sessions[session_id] = session
        session.start()
        if prev is not None and prev != self.config.instance_id and prev in self.cluster.live:
            await self.cluster.session_moved(prev, session_id)
        log.info("session.taken_over", session_id=session_id, trace_id=session.trace_id, from_instance=prev)
        return session

    def _session_detached(self, session: Session) -> None:
        log.info("session.detached", trace_id=session.trace_id, session_id=session.session_id)
        if session.linger_timer is None and not session.closed:
            loop = asyncio.get_running_loop()
            session.linger_timer = loop.call_later(self.config.session_linger, self._linger_expired, session)

    def connection_closed(self, session: Session, conn: Transport) -> None:
        """The socket is gone: unregister it at once (seed 002)."""
        session.detach(conn)

    def _linger_expired(self, session: Session) -> None:
        session.linger_timer = None
        if session.conn is None:
            log.info("session.expired", trace_id=session.trace_id, session_id=session.session_id)
            self._spawn(self._drop_session(session), f"drop-{session.session_id}")

    async def _drop_session(self, session: Session) -> None:
        session.closed = True
        self.sessions.pop(session.session_id, None)
        if session.chunk_timer is not None:
            session.chunk_timer.cancel()
        now = self.clock()
        for job_id in list(session.active_jobs):
            job = self.jobs.get(job_id)
            if job is not None:
                await self._apply_locked(job, lambda j: self.lifecycle.cancel(j, "session_gone", now))
        await session.stop()
        await self.store.drop_session(session.session_id)

    async def close_session(self, session: Session, conn: Transport) -> None:
        """``session_close``: finish running jobs, deliver their results, then close."""
        session.closing = True
        await self._maybe_finish_close(session)

    def _session_result(self, session: Session, job_id: str) -> None:
        """A result is on its way to the client: its job no longer keeps the session open
        (this is how a job handed over to another instance counts as done here)."""
        if JobId(job_id) in session.active_jobs:
            session.active_jobs.discard(JobId(job_id))
            if session.closing and not session.active_jobs:
                self._spawn(self._maybe_finish_close(session), "finish-close")

    async def _maybe_finish_close(self, session: Session) -> None:
        if not session.closing or session.active_jobs or session.closed:
            return
        session.emit(p.SessionClosed(reason="client_closed"))
        await session.drain()
        conn = session.conn
        await self._drop_session(session)
        if conn is not None:
            await _close_quietly(conn, 1000, "session closed")
        log.info("session.closed", trace_id=session.trace_id, session_id=session.session_id)

    async def ack_events(self, session: Session, seq: int) -> None:
        if seq > 0:
            await self.store.ack_events(session.session_id, seq)

    # ------------------------------------------------------------------ utterances

    async def utterance(self, session: Session, msg: p.Utterance) -> None:
        fmt = msg.audio_format or session.settings.audio_format
        rate = msg.sample_rate or session.settings.sample_rate
        await self._new_utterance(session, msg.utterance_index, msg.audio, fmt, rate, msg.request_id)

    async def _new_utterance(
        self,
        session: Session,
        index: int,
        audio: bytes,
        fmt: str,
        rate: int,
        request_id: str | None,
    ) -> None:
        if session.closing:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "session is closing; no new utterances")
        if index < 0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "utterance_index must not be negative")
        if index <= session.max_index and await self.store.lookup_request(session.session_id, f"u:{index}"):
            log.info("utterance.duplicate", session_id=session.session_id, utterance_index=index)
            self.count("utterances_duplicate")
            return
        if index < session.max_index:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"utterance_index {index} is below {session.max_index}: indices must increase",
            )
        try:
            seconds = duration_seconds(audio, fmt, rate)
        except BadAudio as exc:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"field `audio`: {exc}") from None
        if seconds > self.config.max_utterance_seconds:
            raise ProtocolError(
                ErrorCode.AUDIO_TOO_LARGE,
                f"utterance of {seconds:.1f}s exceeds {self.config.max_utterance_seconds:g}s",
            )
        st = session.settings
        now = self.clock()
        jobs = []
        for tgt in st.tgt_langs:
            stages = expand_stages(
                st.src_lang,
                tgt,
                tts=st.tts,
                repair_available=self.store.nodes().repair_available(st.src_lang),
            )
            jobs.append(
                Job(
                    job_id=new_job_id(),
                    trace_id=session.trace_id,
                    session_id=session.session_id,
                    utterance_index=index,
                    src_lang=st.src_lang,
                    tgt_lang=tgt,
                    stages=stages,
                    audio=audio,
                    audio_format=fmt,
                    sample_rate=rate,
                    audio_seconds=seconds,
                    created_at=now,
                    request_id=request_id,
                    preferred_node_id=NodeId(st.preferred_node_id) if st.preferred_node_id else None,
                )
            )
        deadline = time.time() + self.config.pending_timeout
        records = [self._job_record(j, st.tts, st.partials, deadline, with_data=True) for j in jobs]
        refused = await self.store.accept_utterance(
            session.session_id, index, request_id, records, st.tgt_langs
        )
        if refused is not None:
            log.info(
                "utterance.duplicate",
                session_id=session.session_id,
                utterance_index=index,
                request_id=request_id,
                by=refused,
            )
            self.count("utterances_duplicate")
            return
        session.max_index = max(session.max_index, index)
        log.info(
            "utterance.received",
            trace_id=session.trace_id,
            session_id=session.session_id,
            utterance_index=index,
            src_lang=st.src_lang,
            tgt_langs=st.tgt_langs,
            audio_size_bytes=len(audio),
            audio_seconds=round(seconds, 3),
        )
        self.count("utterances_received")
        for job in jobs:
            tgt = job.tgt_lang
            stages = job.stages
            self.jobs[job.job_id] = job
            self.extra[job.job_id] = JobExtra(
                st.tts, st.partials, asyncio.Lock(), [], first_tgt=job.tgt_lang == st.tgt_langs[0]
            )
            session.active_jobs.add(job.job_id)
            session.job_ids.append(job.job_id)
            self.count("jobs_created")
            log.info(
                "job.created",
                **job_fields(job),
                src_lang=job.src_lang,
                tgt_lang=tgt,
                stages=list(stages),
                audio_format=fmt,
                audio_size_bytes=len(audio),
            )
            await self._apply_locked(job, lambda j: self.lifecycle.created(j, self.clock()))

    # streaming ---------------------------------------------------------------

    async def audio_chunk(self, session: Session, msg: p.AudioChunk) -> None:
        if session.settings.audio_format != "pcm16":
            raise ProtocolError(ErrorCode.BAD_AUDIO, "audio_chunk streaming needs audio_format pcm16")
        if msg.seq <= session.chunk_seq:
            log.info("audio_chunk.duplicate", session_id=session.session_id, seq=msg.seq)
            return
        if len(msg.audio) % 2:
            raise ProtocolError(ErrorCode.BAD_AUDIO, "field `audio`: pcm16 chunk has an odd byte count")
        session.chunk_seq = msg.seq
        session.chunk_buf += msg.audio
        if session.chunk_timer is not None:
            session.chunk_timer.cancel()
            session.chunk_timer = None
        max_bytes = int(self.config.max_utterance_seconds * session.settings.sample_rate) * 2
        if msg.is_final or len(session.chunk_buf) >= max_bytes:
            await self._close_chunked(session, "final" if msg.is_final else "max_length")
        elif session.chunk_buf:
            session.chunk_timer = asyncio.get_running_loop().call_later(
                self.config.chunk_idle_gap,
                lambda: self._spawn(self._close_chunked(session, "idle_gap"), "chunk-close"),
            )

    async def _close_chunked(self, session: Session, why: str) -> None:
        session.chunk_timer = None
        audio = bytes(session.chunk_buf)
        session.chunk_buf.clear()
        if not audio:
            return
        index = session.max_index + 1
        log.info("utterance.closed", session_id=session.session_id, utterance_index=index, why=why)
        try:
            await self._new_utterance(session, index, audio, "pcm16", session.settings.sample_rate, None)
        except ProtocolError as exc:
            session.emit(p.Error(code=exc.code, message=exc.message, ref=f"utterance {index}"))

    # ------------------------------------------------------------------ nodes

    async def register_node(self, msg: p.NodeRegister, conn: Transport) -> NodeConn:
        p.check_version(msg.protocol_version)
        if self.config.node_token is not None and not _same_token(self.config.node_token, msg.token or ""):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "node token is missing or wrong")
        if not msg.node_id or len(msg.node_id) > 128:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "field `node_id` must be 1-128 characters")
        if msg.max_concurrent_jobs < 1:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "field `max_concurrent_jobs` must be >= 1")
        node_id = NodeId(msg.node_id)
        old = self.nodes.get(node_id)
        if old is not None:
            log.info("node.replaced", node_id=node_id)
            await self.node_gone(old, "replaced by a new connection")
            await _close_quietly(old.transport, 4001, "replaced by a new connection")
        caps = _caps(msg.capabilities)
        now = self.clock()
        view = NodeView(node_id, caps, msg.max_concurrent_jobs, last_heartbeat=now)
        await self.store.register_node(view, self.config.instance_id)
        nc = NodeConn(node_id, conn, msg.version, msg.models, msg.hardware, now, now)
        self.nodes[node_id] = nc
        self.count("nodes_registered")
        log.info(
            "node.registered",
            node_id=node_id,
            pool=view.pool,
            max_concurrent_jobs=msg.max_concurrent_jobs,
            version=msg.version,
            unacked_results=len(msg.unacked_results),
        )
        await nc.send(
            p.NodeRegisterAck(
                node_id=node_id,
                heartbeat_interval_s=self.config.heartbeat_interval,
                pools=[view.pool],
                limits=self.limits(),
            )
        )
        self._spawn(self._drain_waiting(), "drain-waiting")
        if self.cluster is not None:
            self._spawn(self.cluster.broadcast("node", node_id), "broadcast-node")
        return nc

    async def heartbeat(self, nc: NodeConn, msg: p.NodeHeartbeat) -> None:
        nc.last_seen = self.clock()
        if msg.model_stats is not None:
            nc.model_stats = msg.model_stats
        if msg.capabilities is not None:
            view = self.store.nodes().get(nc.node_id)
            if view is not None:
                new_caps = _caps(msg.capabilities)
                if new_caps != view.capabilities:
                    nv = NodeView(nc.node_id, new_caps, view.max_concurrent_jobs)
                    await self.store.register_node(nv, self.config.instance_id)
                    log.info("node.capabilities_changed", node_id=nc.node_id, pool=nv.pool)
        await self.store.heartbeat(nc.node_id, msg.running_jobs, nc.last_seen)
        if self.waiting:
            await self._drain_waiting()

    async def send_to_node(self, node_id: NodeId, msg: Any, job_id: str = "") -> bool:
        """Write to a node held here, or route through its holder's inbox.

        True when the local write finished or the message is in the holder's inbox
        (then the ack timeout covers a loss)."""
        nc = self.nodes.get(node_id)
        if nc is not None:
            return await nc.send(msg)
        if self.cluster is None:
            return False
        owner = self.store.node_owner(node_id)
        if owner is None or owner == self.config.instance_id:
            return False
        return await self.cluster.to_node(owner, node_id, p.encode_str(msg), job_id)

    async def write_local_node(self, node_id: NodeId, frame: str, from_instance: str, job_id: str) -> None:
        nc = self.nodes.get(node_id)
        if nc is None or nc.closed:
            log.warning(
                "send.routed_target_missing", node_id=node_id, job_id=job_id, from_instance=from_instance
            )
            return
        try:
            async with nc.lock, asyncio.timeout(SEND_TIMEOUT):
                await nc.transport.send_text(frame)
            log.debug("send.local", node_id=node_id, job_id=job_id, from_instance=from_instance)
        except Exception as exc:
            log.warning("send.local_failed", node_id=node_id, job_id=job_id, error=repr(exc))

    async def session_moved_away(self, session_id: SessionId, new_owner: str) -> None:
        """Another instance holds the session now: flush what we queued for it, tell the new
        holder how far the history goes, and forget it here (its jobs here carry on)."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        log.info(
            "session.moved_away", session_id=session_id, trace_id=session.trace_id, to_instance=new_owner
        )
        conn, session.conn = session.conn, None
        if session.linger_timer is not None:
            session.linger_timer.cancel()
        if conn is not None:
            await _close_quietly(conn, 4004, "session moved to another instance")
        await session.drain()  # everything queued reaches the history: nothing is lost
        session.closed = True
        await session.stop()
        if self.cluster is not None:
            last = await until_available(self.store.last_seq, session_id)
            self.cluster.notify_session(new_owner, session_id, [], up_to=int(last))

    async def capacity_changed(self) -> None:
        if self.waiting:
            await self._drain_waiting()

    async def redis_recovered(self) -> None:
        await self.capacity_changed()

    async def restore_shared_state(self) -> None:
        """Redis came back empty: write back what this instance holds (its nodes, its
        sessions with their event numbering, its jobs' records)."""
        store = self.store
        assert isinstance(store, RedisStateStore)
        for nc in list(self.nodes.values()):
            view = store.nodes().get(nc.node_id)
            if view is not None:
                await store.register_node(view, self.config.instance_id)
        for session in list(self.sessions.values()):
            last = max(session.written, session.published)
            await store.restore_session(self._record(session), last, self.config.session_linger * 2)
        for job in list(self.jobs.values()):
            extra = self.extra.get(job.job_id)
            if extra is not None:
                await store.save_job(
                    self._job_record(job, extra.tts, extra.partials, time.time() + 30, with_data=True)
                )
                await store.expect_result(job.session_id, job.tgt_lang, job.utterance_index)
        log.warning(
            "cluster.state_restored", nodes=len(self.nodes), sessions=len(self.sessions), jobs=len(self.jobs)
        )

    async def remote_node_gone(self, node_id: NodeId) -> None:
        now = self.clock()
        for job in list(self.jobs.values()):
            if job.node_id == node_id:
                await self._apply_locked(job, lambda j: self.lifecycle.node_gone(j, node_id, now))

    async def adopt_job(self, rec: JobRecord, *, expired: bool) -> None:
        """Take over a job of a dead instance and carry on with it here."""
        if JobId(rec.job_id) in self.jobs or not rec.data:
            return
        now = self.clock()
        job, tts, partials = job_from_record(rec, now)
        self.jobs[job.job_id] = job
        settings = self.sessions.get(job.session_id)
        first = True if settings is None else job.tgt_lang == settings.settings.tgt_langs[0]
        self.extra[job.job_id] = JobExtra(tts, partials, asyncio.Lock(), [], first_tgt=first)
        if settings is not None:
            settings.active_jobs.add(job.job_id)
        log.warning("job.adopted", **job_fields(job), state=job.state.value, expired=expired)
        if not expired:
            return
        state = job.state
        if state is JobState.CREATED:
            await self._apply_locked(job, lambda j: [*self.lifecycle.created(j, now)])
        elif state is JobState.ASSIGNED:
            await self._apply_locked(job, lambda j: self.lifecycle.dispatched(j, j.attempt_id, False, now))
        elif state is JobState.DISPATCHED:
            await self._apply_locked(job, lambda j: self.lifecycle.timer(j, TimerKind.ACK, j.attempt_id, now))
        else:
            await self._apply_locked(
                job, lambda j: self.lifecycle.timer(j, TimerKind.RESULT, j.attempt_id, now)
            )

    async def node_gone(self, nc: NodeConn, why: str) -> None:
        if nc.closed:
            return
        nc.closed = True
        if self.nodes.get(nc.node_id) is nc:
            del self.nodes[nc.node_id]
            await self.store.remove_node(nc.node_id, self.config.instance_id)
        log.info("node.gone", node_id=nc.node_id, why=why, jobs=len(nc.jobs))
        if self.cluster is not None:
            self._spawn(self.cluster.broadcast("gone", nc.node_id), "broadcast-gone")
        now = self.clock()
        node_id = nc.node_id
        for job_id in list(nc.jobs):
            job = self.jobs.get(job_id)
            if job is not None:
                await self._apply_locked(job, lambda j: self.lifecycle.node_gone(j, node_id, now))

    async def node_message(self, nc: NodeConn, msg: p.NodeMessage, frame: str = "") -> None:
        nc.last_seen = self.clock()
        if isinstance(msg, p.NodeHeartbeat):
            await self.heartbeat(nc, msg)
            return
        if isinstance(msg, p.NodeRegister):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "node is already registered")
        job = self.jobs.get(JobId(msg.job_id))
        if job is None and self.cluster is not None:
            # a job of another instance: hand the message to its owner
            owner = await self.cluster.owner_of(msg.job_id)
            if owner is not None and owner != self.config.instance_id:
                if owner in self.cluster.live:
                    await self.cluster.node_msg(owner, nc.node_id, msg.job_id, frame or p.encode_str(msg))
                    return
                if isinstance(msg, p.JobResult) and await self.cluster.claim(msg.job_id):
                    job = self.jobs.get(JobId(msg.job_id))
        await self._job_message(nc.node_id, msg, job)

    async def routed_node_message(self, node_id: NodeId, frame: str) -> None:
        """A node message that arrived at another instance, for a job owned here."""
        msg = p.decode_node(frame)
        if isinstance(msg, (p.NodeHeartbeat, p.NodeRegister)):
            return
        await self._job_message(node_id, msg, self.jobs.get(JobId(msg.job_id)))

    async def _job_message(self, node_id: NodeId, msg: Any, job: Job | None) -> None:
        if job is None:
            job = self.finished.get(JobId(msg.job_id))
            if isinstance(msg, p.JobResult):
                # a copy of a result for a job that already ended (or is unknown): ack and drop
                log.info(
                    "job_result.duplicate",
                    job_id=msg.job_id,
                    node_id=node_id,
                    attempt_id=msg.attempt_id,
                    known=job is not None,
                    trace_id=job.trace_id if job else None,
                )
                self.count("results_duplicate")
                await self.send_to_node(node_id, p.JobResultAck(job_id=msg.job_id, attempt_id=msg.attempt_id))
                return
            log.info("node.message_for_unknown_job", node_id=node_id, job_id=msg.job_id)
            return
        now = self.clock()
        if isinstance(msg, p.JobAck):
            log.info("job.acked", **job_fields(job), from_node=node_id, acked_attempt=msg.attempt_id)
            await self._apply_locked(job, lambda j: self.lifecycle.acked(j, msg.attempt_id, now))
        elif isinstance(msg, p.JobStarted):
            log.info("job.started", **job_fields(job), acked_attempt=msg.attempt_id)
            await self._apply_locked(job, lambda j: self.lifecycle.started(j, msg.attempt_id, now))
        elif isinstance(msg, p.JobReject):
            log.info("job.rejected", **job_fields(job), reason=msg.reason)
            await self._apply_locked(
                job, lambda j: self.lifecycle.rejected(j, msg.attempt_id, msg.reason, now)
            )
        elif isinstance(msg, p.JobPartial):
            extra = self.extra.get(job.job_id)
            if (
                extra is not None
                and extra.partials
                and msg.attempt_id == job.attempt_id
                and not job.state.terminal
                and extra.first_tgt
            ):
                await self._emit(
                    job.session_id, p.AsrPartial(utterance_index=job.utterance_index, text=msg.text)
                )
        elif isinstance(msg, p.JobResult):
            log.info(
                "job_result.received",
                **{**job_fields(job), "node_id": node_id},
                result_attempt=msg.attempt_id,
                success=msg.success,
            )
            err = msg.error
            await self._apply_locked(
                job,
                lambda j: self.lifecycle.result(
                    j,
                    msg.attempt_id,
                    node_id,
                    msg.success,
                    msg,
                    err.code if err else None,
                    err.message if err else None,
                    now,
                ),
            )

    # ------------------------------------------------------------------ applying commands

    async def _apply_locked(self, job: Job, step: Any) -> None:
        extra = self.extra.get(job.job_id)
        if extra is None:  # already finished and forgotten
            return
        async with extra.lock:
            with bound(**job_fields(job)):
                before = (job.state, job.attempt_id)
                await self._apply(job, step(job))
                if (job.state, job.attempt_id) != before and not job.state.terminal:
                    await self._persist(job, extra)

    async def _apply(self, job: Job, cmds: Iterable[Command]) -> None:
        queue = deque(cmds)
        while queue:
            cmd = queue.popleft()
            more = await self._run(job, cmd)
            if more:
                queue.extendleft(reversed(more))

    async def _run(self, job: Job, cmd: Command) -> list[Command]:
        if isinstance(cmd, Select):
            return await self._select(job)
        if isinstance(cmd, Assign):
            return await self._dispatch(job, cmd)
        if isinstance(cmd, Arm):
            self._arm(job, cmd)
        elif isinstance(cmd, Disarm):
            extra = self.extra.get(job.job_id)
            if extra is not None:
                for t in extra.timers:
                    t.cancel()
                extra.timers.clear()
        elif isinstance(cmd, Release) and job.state.terminal and self.cluster is not None:
            # the job ended: the slot is released together with the job record (one round trip)
            extra = self.extra.get(job.job_id)
            if extra is not None:
                extra.pending_release = (cmd.node_id, cmd.attempt_id)
        elif isinstance(cmd, Release):
            try:
                ok = await self.store.release(cmd.node_id, cmd.job_id, cmd.attempt_id)
            except DependencyDown:
                ok = False  # the slot's TTL frees it
            nc = self.nodes.get(cmd.node_id)
            if nc is not None:
                nc.jobs.discard(cmd.job_id)
            log.debug("reservation.released", **job_fields(job), released=ok)
            if self.waiting:
                self._spawn(self._drain_waiting(), "drain-waiting")
        elif isinstance(cmd, Cancel):
            log.info("job.cancel_sent", **job_fields(job), to_node=cmd.node_id, reason=cmd.reason)
            await self.send_to_node(
                cmd.node_id, p.JobCancel(job_id=cmd.job_id, attempt_id=cmd.attempt_id, reason=cmd.reason)
            )
        elif isinstance(cmd, AckResult):
            await self.send_to_node(cmd.node_id, p.JobResultAck(job_id=cmd.job_id, attempt_id=cmd.attempt_id))
        elif isinstance(cmd, Status) and job.job_id in self.jobs:  # else handed over: its new owner reports
            await self._status(job, cmd)
        elif isinstance(cmd, Note):
            self._note(job, cmd)
        elif isinstance(cmd, Finish):
            await self._finish(job, cmd)
        return []

    def _note(self, job: Job, cmd: Note) -> None:
        fields = dict(cmd.fields)
        if cmd.event == "job.stale_event":
            log.debug(cmd.event, **job_fields(job), **fields)
        elif cmd.event == "job_result.duplicate":
            self.count("results_duplicate")
            log.info(cmd.event, **job_fields(job), **fields)
        else:
            if cmd.event == "job.failover":
                reason = str(fields.get("reason", ""))
                self.count("failovers", reason=reason.split(":")[0])
            elif cmd.event.endswith("_timeout"):
                self.count("timeouts", kind=cmd.event.split(".")[1].removesuffix("_timeout"))
            log.warning(cmd.event, **job_fields(job), **fields)

    def _arm(self, job: Job, cmd: Arm) -> None:
        extra = self.extra.get(job.job_id)
        if extra is None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._spawn(
                self._apply_locked(
                    job, lambda j: self.lifecycle.timer(j, cmd.kind, cmd.attempt_id, self.clock())
                ),
                f"timer-{cmd.kind}",
            )

        extra.timers.append(loop.call_later(cmd.delay, fire, context=contextvars.Context()))

    async def _select(self, job: Job) -> list[Command]:
        extra = self.extra[job.job_id]
        first = extra.first_selection
        extra.first_selection = False
        req = Request(
            job.src_lang,
            job.tgt_lang,
            requirements(job.stages, job.src_lang, job.tgt_lang),
            frozenset(job.excluded),
            job.preferred_node_id,
        )
        if first or job.attempt_id > 1:
            log.info(
                "selection.started",
                **job_fields(job),
                request_id=job.request_id,
                src_lang=job.src_lang,
                tgt_lang=job.tgt_lang,
                preferred_node_id=job.preferred_node_id,
                excluded=sorted(job.excluded),
            )
        out = self.select(self.store.nodes(), req, self.rng)
        if out.fallback is not None:
            log.info(
                "selection.preferred_fallback",
                **job_fields(job),
                preferred_node_id=job.preferred_node_id,
                fallback_reason=out.fallback.value,
                selected_node=out.candidates[0] if out.candidates else None,
            )
        ttl = self.config.ack_timeout + self.lifecycle.config.result_deadline(job.audio_seconds) + 30.0
        for node_id in out.candidates:
            self.count("reservations_attempted")
            handed_to = None
            try:
                record = handover = None
                if self.cluster is not None:  # the job's record rides along with the reservation
                    record = JobRecord(
                        job.job_id,
                        self.config.instance_id,
                        JobState.DISPATCHED.value,
                        job.attempt_id,
                        node_id,
                        time.time()
                        + self.config.ack_timeout
                        + self.lifecycle.config.result_deadline(job.audio_seconds),
                    )
                    holder = self.store.node_owner(node_id) or self.config.instance_id
                    if holder != self.config.instance_id:  # and the job goes to the node's instance
                        entry = self.cluster.adopt_entry(job.job_id, self._handover_data(job, node_id))
                        handover = Handover(holder, entry)
                reserved = await self.store.reserve(
                    node_id, job.job_id, job.attempt_id, ttl, record, handover
                )
                if reserved and handover is not None and handover.sent:
                    handed_to = handover.to_instance
            except DependencyDown:
                self.waiting[job.job_id] = None
                log.warning("selection.failed", **job_fields(job), reason="dependency_down")
                return self.lifecycle.selection_failed(job, "dependency_down", first)
            if reserved:
                self.count("reservations_succeeded")
                self.count(
                    "selections", outcome="ok", reason="preferred" if out.preferred_used else out.selector
                )
                self.waiting.pop(job.job_id, None)
                log.info(
                    "selection.succeeded",
                    **{**job_fields(job), "node_id": node_id},
                    selected_node=node_id,
                    selector=out.selector,
                    preferred_used=out.preferred_used,
                )
                log.debug(
                    "selection.pool_details",
                    **job_fields(job),
                    pool_count=out.pool_count,
                    eligible_pools=out.eligible_pools,
                    selected_pool=out.selected_pool,
                    attempts=out.attempts,
                )
                log.info("reservation.succeeded", **{**job_fields(job), "node_id": node_id})
                if handed_to is not None:  # the node's instance runs it from here on
                    return self._handed_over(job, handed_to)
                nc = self.nodes.get(node_id)
                if nc is not None:
                    nc.jobs.add(job.job_id)
                return self.lifecycle.selected(job, node_id, self.clock())
            log.info("reservation.failed", **{**job_fields(job), "node_id": node_id})
        reason = out.reason.value if out.reason else "no_capacity"
        self.count("selections", outcome="failed", reason=reason)
        if first or job.job_id not in self.waiting:
            log.warning(
                "selection.failed",
                **job_fields(job),
                selector=out.selector,
                reason=reason,
                breakdown={k.value: v for k, v in out.breakdown.counts.items()},
                src_lang=job.src_lang,
                tgt_lang=job.tgt_lang,
            )
        self.waiting[job.job_id] = None
        return self.lifecycle.selection_failed(job, reason, first)

    async def _drain_waiting(self) -> None:
        """Capacity may have freed: try the waiting jobs, oldest first."""
        blocked: set[tuple[str, str, tuple[str, ...]]] = set()
        for job_id in list(self.waiting):
            job = self.jobs.get(job_id)
            if job is None or job.state is not JobState.CREATED:
                self.waiting.pop(job_id, None)
                continue
            key = (job.src_lang, job.tgt_lang, job.stages)
            if key in blocked and not job.excluded:
                continue
            await self._apply_locked(job, self._retry_select)
            if job.state is JobState.CREATED and not job.excluded:
                blocked.add(key)

    def _retry_select(self, job: Job) -> list[Command]:
        if job.state is not JobState.CREATED:
            return []
        return [Select(job.job_id)]

    async def _dispatch(self, job: Job, cmd: Assign) -> list[Command]:
        if self.cluster is not None and cmd.node_id not in self.nodes:
            holder = self.store.node_owner(cmd.node_id)
            if holder is not None and holder != self.config.instance_id:
                return await self._hand_over(job, cmd, holder)
        deadline = self.config.ack_timeout + self.lifecycle.config.result_deadline(job.audio_seconds)
        msg = p.JobAssign(
            job_id=job.job_id,
            attempt_id=cmd.attempt_id,
            trace_id=job.trace_id,
            session_id=job.session_id,
            utterance_index=job.utterance_index,
            src_lang=job.src_lang,
            tgt_lang=job.tgt_lang,
            audio=job.audio,
            audio_format=job.audio_format,  # type: ignore[arg-type]
            sample_rate=job.sample_rate,
            stages=list(job.stages),  # type: ignore[arg-type]
            deadline_ms=int(deadline * 1000),
        )
        ok = await self.send_to_node(cmd.node_id, msg, job_id=job.job_id)
        now = self.clock()
        if ok:
            latency = now - job.created_at
            log.info(
                "job.dispatched",
                **job_fields(job),
                dispatch_latency_seconds=round(latency, 6),
            )
            self.count("jobs_dispatched")
            self.metrics.dispatch_latency.observe(latency)
        return self.lifecycle.dispatched(job, cmd.attempt_id, ok, now)

    def _handover_data(self, job: Job, node_id: NodeId) -> dict[str, Any]:
        """What the node's instance needs to run the job (audio as bytes)."""
        extra = self.extra.get(job.job_id)
        data = job_data(job, extra.tts if extra else True, extra.partials if extra else True)
        data.update(
            attempt_id=job.attempt_id,
            node_id=node_id,
            excluded=sorted(job.excluded),
            first_tgt=extra.first_tgt if extra else True,
        )
        return data

    async def _hand_over(self, job: Job, cmd: Assign, holder: str) -> list[Command]:
        """The node is held by another instance and the reservation did not already put
        the job into that instance's inbox: send it there ourselves."""
        assert self.cluster is not None
        sent = await self.cluster.adopt(holder, job.job_id, self._handover_data(job, cmd.node_id))
        if not sent:
            return self.lifecycle.dispatched(job, cmd.attempt_id, False, self.clock())
        return self._handed_over(job, holder)

    def _handed_over(self, job: Job, holder: str) -> list[Command]:
        """``holder`` owns and runs the job from here on (the reservation recorded it as
        owner), so the node's answers are handled where they arrive and only the session's
        events cross back; this instance forgets the job (its assign and status steps
        belong to the new owner)."""
        log.info("job.handed_over", **job_fields(job), to_instance=holder)
        self.jobs.pop(job.job_id, None)
        extra = self.extra.pop(job.job_id, None)
        if extra is not None:
            for t in extra.timers:
                t.cancel()
        self.waiting.pop(job.job_id, None)
        # it stays in its session's active jobs: its result, through the history, ends it there
        return []

    async def adopt_handed_over(self, job_id: str, data: dict[str, Any]) -> None:
        """Another instance handed us a job for a node we hold: dispatch and run it here."""
        if JobId(job_id) in self.jobs:
            return
        job, tts, partials = job_from_data(
            job_id, data, JobState.ASSIGNED.value, int(data["attempt_id"]), data["node_id"], self.clock()
        )
        self.jobs[job.job_id] = job
        self.extra[job.job_id] = JobExtra(tts, partials, asyncio.Lock(), [], first_selection=False,
                                          first_tgt=bool(data.get("first_tgt", True)))  # fmt: skip
        nc = self.nodes.get(NodeId(data["node_id"]))
        if nc is not None:
            nc.jobs.add(job.job_id)
        log.info("job.adopted", **job_fields(job), reason="handed over")
        node_id = NodeId(data["node_id"])
        await self._apply_locked(
            job, lambda j: [Assign(j.job_id, node_id, j.attempt_id), Status(j.job_id, "assigned", node_id)]
        )

    async def _status(self, job: Job, cmd: Status) -> None:
        position = None
        if cmd.status == "queued":
            position = list(self.waiting).index(job.job_id) + 1 if job.job_id in self.waiting else None
        await self._emit(
            job.session_id,
            p.JobStatus(
                utterance_index=job.utterance_index,
                tgt_lang=job.tgt_lang,
                status=cmd.status,  # type: ignore[arg-type]
                node_id=cmd.node_id,
                reason=cmd.reason,
                queue_position=position,
            ),
        )

    async def _emit(self, session_id: SessionId, msg: Any) -> None:
        """An event for a session held here (queued to its pump) or elsewhere (via the store)."""
        session = self.sessions.get(session_id)
        if session is not None:
            session.emit(msg)
            return
        if self.cluster is not None:
            self._relay(session_id).emit(msg)

    def _relay(self, session_id: SessionId) -> SessionRelay:
        relay = self.relays.get(session_id)
        if relay is None:
            relay = SessionRelay(session_id, self.store, self._relayed, self._relay_idle, self._relay_notice)
            self.relays[session_id] = relay
        return relay

    def _relay_idle(self, relay: SessionRelay) -> None:
        if self.relays.get(relay.session_id) is relay:
            del self.relays[relay.session_id]

    async def _remote_holder(self, session_id: SessionId) -> str | None:
        """The live instance other than this one that holds the session, if any."""
        if self.cluster is None or session_id in self.sessions:
            return None
        owner = await self.cluster.session_holder(session_id)
        if owner is None or owner == self.config.instance_id or owner not in self.cluster.live:
            return None
        return owner

    async def _relay_notice(self, session_id: SessionId) -> Notify | None:
        """Where a relay's store step should announce the events: the session's holder,
        when that is another live instance (else the relay delivers or notifies itself)."""
        owner = await self._remote_holder(session_id)
        if owner is None or self.cluster is None:
            return None
        return Notify(owner, self.cluster.next_message_id(), self.config.instance_id)

    async def _relayed(self, session_id: SessionId, events: list[tuple[int, bytes]]) -> None:
        """A relay put events into a session's history and the store did not announce
        them: deliver them here, or tell whoever holds the session now."""
        session = self.sessions.get(session_id)
        if session is not None:  # it moved here meanwhile
            session.deliver(events, events[-1][0])
            return
        owner = await self._remote_holder(session_id)
        if owner is not None and self.cluster is not None:
            self.cluster.notify_session(owner, session_id, events)

    async def _finish(self, job: Job, cmd: Finish) -> None:
        self.waiting.pop(job.job_id, None)
        extra = self.extra.pop(job.job_id, None)
        self.jobs.pop(job.job_id, None)
        self.finished[job.job_id] = job
        while len(self.finished) > FINISHED_JOBS_KEPT:
            self.finished.popitem(last=False)
        for nc in self.nodes.values():
            nc.jobs.discard(job.job_id)
        now = self.clock()
        self.count("jobs_finished", state=job.state.value, code=cmd.error_code or "")
        if not cmd.ok:
            self.failures.append(
                {
                    "at": time.time(),
                    "job_id": job.job_id,
                    "trace_id": job.trace_id,
                    "session_id": job.session_id,
                    "utterance_index": job.utterance_index,
                    "tgt_lang": job.tgt_lang,
                    "code": cmd.error_code,
                    "reason": cmd.error_message,
                    "attempts": job.attempt_id,
                }
            )
        total_ms = (now - job.created_at) * 1000
        self.metrics.end_to_end.labels("ok" if cmd.ok else "failed").observe(total_ms / 1000)
        if cmd.ok:
            res: p.JobResult = cmd.payload
            t = res.timings
            for stage in job.stages:
                ms = getattr(t, f"{stage}_ms", 0.0)
                if ms:
                    self.metrics.stage_latency.labels(stage).observe(ms / 1000)
            queue_ms = ((job.dispatched_at or now) - job.created_at) * 1000
            timings = p.Timings(
                queue_ms=round(queue_ms, 3),
                asr_ms=t.asr_ms,
                repair_ms=t.repair_ms,
                nmt_ms=t.nmt_ms,
                tts_ms=t.tts_ms,
                total_ms=round(total_ms, 3),
            )
            tts_wanted = extra.tts if extra else True
            result = p.TranslationResult(
                utterance_index=job.utterance_index,
                tgt_lang=job.tgt_lang,
                job_id=job.job_id,
                status="ok",
                text_asr=res.text_asr,
                text_translated=res.text_translated,
                tts_audio=res.tts_audio if tts_wanted else None,
                tts_format=res.tts_format if tts_wanted else None,
                tts_sample_rate=res.tts_sample_rate if tts_wanted else None,
                timings=timings,
                node_id=cmd.node_id,
                trace_id=job.trace_id,
            )
        else:
            result = p.TranslationResult(
                utterance_index=job.utterance_index,
                tgt_lang=job.tgt_lang,
                job_id=job.job_id,
                status="failed",
                timings=p.Timings(total_ms=round(total_ms, 3)),
                node_id=cmd.node_id,
                error=p.ErrorInfo(code=cmd.error_code or "internal", message=cmd.error_message or ""),
                trace_id=job.trace_id,
            )
        log.info(
            "result.created",
            **{**job_fields(job), "node_id": cmd.node_id},
            status=result.status,
            error_code=cmd.error_code,
            text_asr=result.text_asr,
            text_translated=result.text_translated,
            tts_audio_len=len(result.tts_audio or b""),
            elapsed_ms=round(total_ms, 3),
        )
        self.count("results_emitted")
        release = extra.pending_release if extra is not None else None
        end = JobEnd(job.job_id, self.config.instance_id, release)
        session = self.sessions.get(job.session_id)
        if session is not None:
            # the job ends (record, slot) in the same store step that puts the result into
            # the history: no round trip of its own, none before the client gets the result
            session.active_jobs.discard(job.job_id)
            session.emit_result(
                job.tgt_lang, job.utterance_index, result, end, lambda: self._job_ended(job, release)
            )
            if session.closing and not session.active_jobs:
                self._spawn(self._maybe_finish_close(session), "finish-close")
            return
        if self.cluster is None:
            await self._finish_record(job, release)
            log.warning("result.dropped_session_gone", **job_fields(job))
            return
        # the session is held by another instance (or by none right now): the result goes
        # into its history in order, and its holder is told
        log.info("result.sending", **job_fields(job), live=False, routed=True)
        self._relay(job.session_id).emit_result(
            job.tgt_lang, job.utterance_index, result, end, lambda: self._job_ended(job, release)
        )

    async def _persist(self, job: Job, extra: JobExtra) -> None:
        """Record the job's state and next deadline, so another instance can take it over."""
        if self.cluster is None or job.state is not JobState.CREATED:
            # the reservation wrote the record with the whole ack + result budget as deadline;
            # only a retry (back to created) needs a new record
            return
        cfg = self.lifecycle.config
        wait = {
            JobState.CREATED: cfg.pending_timeout,
            JobState.DISPATCHED: cfg.ack_timeout + cfg.result_deadline(job.audio_seconds),
            JobState.ACCEPTED: cfg.result_deadline(job.audio_seconds),
        }.get(job.state, cfg.pending_timeout)
        rec = self._job_record(job, extra.tts, extra.partials, time.time() + wait)
        try:
            await self.store.save_job(rec)
        except DependencyDown as exc:
            log.warning("job.persist_failed", **job_fields(job), error=str(exc))

    async def _finish_record(self, job: Job, release: tuple[NodeId, int] | None) -> None:
        try:
            await self.store.finish_job(job.job_id, self.config.instance_id, release)
        except DependencyDown:
            pass  # the record and the slot expire by themselves
        self._job_ended(job, release)

    def _job_ended(self, job: Job, release: tuple[NodeId, int] | None) -> None:
        """The job's record is finished and its slot released in the store."""
        if release is not None:
            nc = self.nodes.get(release[0])
            if nc is not None:
                nc.jobs.discard(job.job_id)
            if self.waiting:
                self._spawn(self._drain_waiting(), "drain-waiting")

    # ------------------------------------------------------------------ liveness

    async def _sweep(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(min(interval, 1.0))
            now = self.clock()
            if self.waiting:
                await self._drain_waiting()  # e.g. after the state store came back
            limit = interval * self.config.heartbeat_misses
            for nc in list(self.nodes.values()):
                if now - nc.last_seen > limit:
                    log.warning(
                        "node.heartbeat_lost",
                        node_id=nc.node_id,
                        silent_s=round(now - nc.last_seen, 1),
                    )
                    await self.node_gone(nc, "heartbeat lost")
                    await _close_quietly(nc.transport, 4002, "heartbeat lost")

    # ------------------------------------------------------------------ queries

    async def readiness_problems(self) -> list[str]:
        problems = []
        if self._sweeper is None or self._sweeper.done():
            problems.append("scheduler loop is not running")
        try:
            await self.store.ping()
        except Exception as exc:
            problems.append(f"state store unreachable: {exc}")
        return problems

    def job_view(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(JobId(job_id)) or self.finished.get(JobId(job_id))
        if job is None:
            return None
        return {
            "job_id": job.job_id,
            "trace_id": job.trace_id,
            "session_id": job.session_id,
            "utterance_index": job.utterance_index,
            "src_lang": job.src_lang,
            "tgt_lang": job.tgt_lang,
            "stages": list(job.stages),
            "state": job.state.value,
            "attempt_id": job.attempt_id,
            "node_id": job.node_id,
            "excluded_nodes": sorted(job.excluded),
            "last_reason": job.last_reason,
            "failure_code": job.failure_code,
            "history": [
                {"t": round(t - job.created_at, 6), "state": s, "attempt_id": a} for t, s, a in job.history
            ],
        }

    def servable_pairs(self) -> list[tuple[str, str]]:
        pairs: set[tuple[str, str]] = set()
        for view in self.store.nodes().all_nodes():
            if view.online:
                pairs |= view.capabilities.servable_pairs()
        return sorted(pairs)


def job_data(job: Job, tts: bool, partials: bool) -> dict[str, Any]:
    """What another instance needs to rebuild the job, audio included (as bytes:
    MessagePack carries them as they are, msgspec's JSON as base64)."""
    return {
        "trace_id": job.trace_id,
        "session_id": job.session_id,
        "utterance_index": job.utterance_index,
        "src_lang": job.src_lang,
        "tgt_lang": job.tgt_lang,
        "stages": list(job.stages),
        "audio": job.audio,
        "audio_format": job.audio_format,
        "sample_rate": job.sample_rate,
        "audio_seconds": job.audio_seconds,
        "request_id": job.request_id,
        "preferred_node_id": job.preferred_node_id,
        "tts": tts,
        "partials": partials,
    }


_STATES = {s.value: s for s in JobState}


def job_from_record(rec: JobRecord, now: float) -> tuple[Job, bool, bool]:
    return job_from_data(rec.job_id, rec.data, rec.state, rec.attempt_id, rec.node_id, now)


def job_from_data(
    job_id: str, d: dict[str, Any], state: str, attempt_id: int, node_id: str | None, now: float
) -> tuple[Job, bool, bool]:
    """A job as :func:`job_data` described it; returns it with its tts and partials flags."""
    audio = d["audio"]
    job = Job(
        job_id=JobId(job_id),
        trace_id=TraceId(d["trace_id"]),
        session_id=SessionId(d["session_id"]),
        utterance_index=int(d["utterance_index"]),
        src_lang=d["src_lang"],
        tgt_lang=d["tgt_lang"],
        stages=tuple(d["stages"]),
        audio=audio if isinstance(audio, bytes) else base64.b64decode(audio),
        audio_format=d["audio_format"],
        sample_rate=int(d["sample_rate"]),
        audio_seconds=float(d["audio_seconds"]),
        created_at=now,
        request_id=d.get("request_id"),
        preferred_node_id=d.get("preferred_node_id"),
    )
    job.state = _STATES.get(state, JobState.CREATED)
    job.attempt_id = attempt_id
    job.node_id = NodeId(node_id) if node_id else None
    excluded = d.get("excluded")
    if excluded:
        job.excluded = {NodeId(n) for n in excluded}
    return job, bool(d.get("tts", True)), bool(d.get("partials", True))


def _caps(c: p.Capabilities) -> NodeCapabilities:
    return NodeCapabilities(
        asr=frozenset(c.asr_languages),
        repair=frozenset(c.repair_languages),
        nmt=frozenset((a, b) for a, b in c.nmt_pairs),
        tts=frozenset(c.tts_languages),
    )


def _same_token(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


async def _close_quietly(conn: Transport, code: int, reason: str) -> None:
    try:
        await conn.close(code, reason)
    except Exception:
        pass
