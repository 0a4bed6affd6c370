"""The node agent: dial the scheduler, register, heartbeat, run jobs (the node side of ``docs/protocol.md``).

Connection: exponential backoff with jitter across the configured scheduler
URLs, so a node started before its scheduler joins as soon as it is up.
Receive and heartbeat run as sibling tasks of one connection and end together.
Jobs outlive a connection: a result produced while disconnected is kept, and
every result is kept until the scheduler sends ``job_result_ack``; after a
reconnect the node lists them in ``node_register`` and sends them again.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .. import __version__
from .. import protocol as p
from ..audio import BadAudio, duration_seconds
from ..engines.base import EngineError
from ..engines.registry import EngineSet
from ..observability import tracing
from ..observability.logging import bind, get_logger
from ..observability.metrics import Metrics, model_stat_rows, register_model_metrics
from ..tls import client_context
from .config import NodeConfig
from .hardware import describe
from .live import Carry, LiveInput, run_streaming
from .pipeline import PipelineOutput, run_pipeline
from .shared_asr import SharedTranscripts

log = get_logger("linguamesh.node")

MAX_FRAME = 64 * 1024 * 1024
#: A stopping node waits this long for the scheduler's answer to its close frame.
CLOSE_TIMEOUT = 2.0
#: How long a stopping node waits for its cancelled jobs and sends to end.
STOP_TIMEOUT = 5.0


class FatalNodeError(Exception):
    """The scheduler refused this node for good (bad token, protocol version)."""


#: Sessions whose streaming context a node keeps (the most recent; each about 1.5 MB at
#: most: 5 s of audio and the 30 s utterance it came from, for up to 30 s).
MAX_CARRIES = 64


@dataclass
class _Running:
    job: p.JobAssign
    task: asyncio.Task[None]
    #: a streaming job's audio so far
    live: LiveInput | None = None


def node_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise ValueError(f"scheduler URL {url!r} must start with ws:// or wss://")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws/node"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class NodeAgent:
    def __init__(self, config: NodeConfig, engines: EngineSet) -> None:
        self.config = config
        self.engines = engines
        self.node_id = config.node_id
        self.urls = [node_url(u) for u in config.scheduler_urls]
        #: what this machine is (CPU, memory, GPUs), read once
        self.hardware = describe()
        self.running: dict[str, _Running] = {}
        #: per (session, target): the context a sentence cut hands the next utterance
        self.carries: OrderedDict[tuple[str, str], Carry] = OrderedDict()
        #: an utterance's jobs for its several target languages share one transcript here
        self.transcripts = SharedTranscripts()
        self.unacked: OrderedDict[tuple[str, int], p.JobResult] = OrderedDict()
        #: log fields of each kept result's job, so the ack is logged with its trace_id
        self._unacked_fields: dict[tuple[str, int], dict[str, Any]] = {}
        self.ws: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.heartbeat_interval = 5.0
        self.metrics = Metrics(role="node")
        self.tracing = tracing.current("node")
        self._register_gauges()
        self._send_lock = asyncio.Lock()
        self._stopping = False
        self._rng = random.Random()
        #: shutting down: no new jobs; the running ones finish and their results are acked
        self.draining = False
        #: the scheduler's ``reconnect`` hint: seconds to wait before the next connect, and
        #: the index in ``urls`` of the address to dial then (None: the next one in turn)
        self._reconnect_after: float | None = None
        self._reconnect_to: int | None = None
        #: set when a job ends or a result is acked (the drain waits on it)
        self._progress = asyncio.Event()
        self._sends: set[asyncio.Task[bool]] = set()

    def _register_gauges(self) -> None:
        m = self.metrics
        m.gauge("node_running_jobs", "Jobs running on this node", lambda: [({}, len(self.running))])
        m.gauge(
            "node_connected",
            "1 when connected to a scheduler",
            lambda: [({}, float(self.connected.is_set()))],
        )
        m.gauge(
            "node_unacked_results",
            "Results kept until the scheduler acks them",
            lambda: [({}, len(self.unacked))],
        )
        models = self.engines.models_manager
        register_model_metrics(m, "", lambda: model_stat_rows(models.snapshot(), {}))
        models.on_inference = lambda key, seconds: m.model_inference.labels(key).observe(seconds)

    def health(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "connected": self.connected.is_set(),
            "running_jobs": len(self.running),
            "max_concurrent_jobs": self.config.max_concurrent_jobs,
            "unacked_results": len(self.unacked),
            "engines": [e.name for e in self.engines.all()],
            "unavailable_engines": [f"{f.kind}: {f.error}" for f in self.engines.failures],
            "models_loaded": self.engines.models_manager.loaded(),
        }

    def _job_span(self, job: p.JobAssign) -> Span | None:
        """The job's ``node.job`` span under the scheduler's attempt (tracing on), current in
        this job's task so each stage's span is its child."""
        t = self.tracing
        if t is None:
            return None
        span = t.span(
            "node.job",
            context=tracing.remote_parent(job.traceparent),
            kind=SpanKind.SERVER,
            attributes={
                "linguamesh.job_id": job.job_id,
                "linguamesh.attempt_id": job.attempt_id,
                "linguamesh.node_id": self.node_id,
                "linguamesh.trace_id": job.trace_id,
                "linguamesh.pair": f"{job.src_lang}-{job.tgt_lang}",
                "linguamesh.streaming": job.streaming or None,
            },
        )
        otel_context.attach(trace.set_span_in_context(span))  # the task's own context
        return span

    def _fields(self, job: p.JobAssign) -> dict[str, Any]:
        return {
            "trace_id": job.trace_id,
            "session_id": job.session_id,
            "job_id": job.job_id,
            "node_id": self.node_id,
            "utterance_index": job.utterance_index,
            "attempt_id": job.attempt_id,
        }

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        """Connect and serve until :meth:`stop`; raises FatalNodeError if refused for good."""
        failures = 0
        i = 0
        try:
            while not self._stopping:
                url = self.urls[i % len(self.urls)]
                try:
                    async with connect(
                        url,
                        ssl=client_context(url, self.config.ca_file),
                        max_size=MAX_FRAME,
                        open_timeout=5,
                        ping_interval=20,
                        compression=None,
                        close_timeout=CLOSE_TIMEOUT,
                    ) as ws:
                        failures = 0
                        await self._serve(ws, url)
                except FatalNodeError:
                    raise
                except (
                    OSError,
                    InvalidHandshake,
                    InvalidURI,
                    ConnectionClosed,
                    TimeoutError,
                ) as exc:
                    log.info("node.connect_failed", node_id=self.node_id, url=url, error=repr(exc))
                    self.metrics.inc("node_connect_failures")
                finally:
                    self.ws = None
                    self.connected.clear()
                if self._stopping:
                    break
                delay = min(self.config.backoff_max, self.config.backoff_initial * 2**failures)
                delay *= self._rng.uniform(0.5, 1.0)
                if self._reconnect_after is not None:  # the scheduler said when (it is draining)
                    delay, self._reconnect_after = self._reconnect_after, None
                failures += 1
                if self._reconnect_to is not None:  # ... and where
                    i, self._reconnect_to = self._reconnect_to, None
                else:
                    i += 1
                await asyncio.sleep(delay)
        finally:
            await self._end_tasks()

    async def _end_tasks(self) -> None:
        """The connection is over for good: the jobs still running, then the sends still
        queued, are cancelled and waited for (at most STOP_TIMEOUT: a stop is bounded)."""
        tasks = [r.task for r in self.running.values()] + list(self._sends)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            if pending:
                log.warning("node.tasks_left_running", node_id=self.node_id, tasks=len(pending))

    async def stop(self) -> None:
        """Stop at once: the socket is closed (within its close timeout) and :meth:`run`
        ends, cancelling what still runs (see :meth:`drain` for a graceful stop)."""
        self._stopping = True
        if self.ws is not None:
            await self.ws.close()

    async def drain(self, timeout: float) -> bool:
        """Shut down gracefully: report full (no new jobs), let the running jobs finish and
        their results reach a scheduler (acked), then stop. True when all of it happened
        within ``timeout``; the rest is abandoned (the scheduler fails those jobs over)."""
        if self.draining:
            return False
        self.draining = True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        log.warning(
            "node.draining",
            node_id=self.node_id,
            running_jobs=len(self.running),
            unacked_results=len(self.unacked),
            timeout_s=timeout,
        )
        await self._send(self._heartbeat_msg())  # the scheduler hears it now, not at the next beat
        while (self.running or self.unacked) and loop.time() < end:
            self._progress.clear()
            try:
                async with asyncio.timeout(end - loop.time()):
                    await self._progress.wait()
            except TimeoutError:
                break
        done = not self.running and not self.unacked
        log.warning(
            "node.drained",
            node_id=self.node_id,
            complete=done,
            running_jobs=len(self.running),
            unacked_results=len(self.unacked),
        )
        await self.stop()
        return done

    def _heartbeat_msg(self) -> p.NodeHeartbeat:
        stats = self.engines.models_manager.snapshot()
        return p.NodeHeartbeat(
            running_jobs=len(self.running), model_stats=stats or None, draining=self.draining
        )

    async def _serve(self, ws: ClientConnection, url: str) -> None:
        caps = self.engines.capabilities()
        caps.streaming = self.config.streaming and bool(caps.asr_languages)
        await ws.send(
            p.encode_str(
                p.NodeRegister(
                    protocol_version=p.PROTOCOL_VERSION,
                    node_id=self.node_id,
                    token=self.config.token,
                    version=__version__,
                    capabilities=caps,
                    models=self.engines.models(),
                    max_concurrent_jobs=self.config.max_concurrent_jobs,
                    unacked_results=[job_id for job_id, _ in self.unacked],
                    hardware=self.hardware,
                )
            )
        )
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # comes as the answer arrives, and a stopped node would then serve on
        async with asyncio.timeout(10):
            first = p.decode_to_node(await ws.recv())
        if isinstance(first, p.Error):
            if first.code in p.FATAL_CODES:
                raise FatalNodeError(f"scheduler refused the node: {first.code}: {first.message}")
            raise ConnectionError(f"register failed: {first.code}: {first.message}")
        if not isinstance(first, p.NodeRegisterAck):
            raise ConnectionError(f"expected node_register_ack, got {type(first).__name__}")
        self.heartbeat_interval = first.heartbeat_interval_s
        if self._stopping:  # stop() came while the registration was answered
            return
        self.ws = ws
        self.connected.set()
        if self.draining:  # reconnected while draining: still full
            await self._send(self._heartbeat_msg())
        self.metrics.inc("node_connects")
        log.info("node.connected", node_id=self.node_id, url=url, pools=first.pools)
        for result in list(self.unacked.values()):
            fields = self._unacked_fields.get((result.job_id, result.attempt_id), {"job_id": result.job_id})
            log.info("job_result.resending", **{**fields, "node_id": self.node_id})
            await self._send(result)
        hb = asyncio.create_task(self._heartbeat(ws), name="heartbeat")
        try:
            async for frame in ws:
                await self._on_frame(frame)
        finally:
            hb.cancel()
            log.info("node.disconnected", node_id=self.node_id, url=url)

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self._send(self._heartbeat_msg())

    def _send_soon(self, msg: Any) -> None:
        """Send from code that cannot wait (sends keep their order: the lock is fair)."""
        task = asyncio.get_running_loop().create_task(self._send(msg))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, msg: Any) -> bool:
        ws = self.ws
        if ws is None:
            return False
        try:
            async with self._send_lock:
                await ws.send(p.encode_str(msg))
            return True
        except ConnectionClosed:
            return False

    # ------------------------------------------------------------------ messages

    async def _on_frame(self, frame: str | bytes) -> None:
        try:
            msg = p.decode_to_node(frame)
        except p.ProtocolError as exc:
            log.warning("node.bad_frame", node_id=self.node_id, code=exc.code.value, message=exc.message)
            return
        if isinstance(msg, p.JobAssign):
            await self._assign(msg)
        elif isinstance(msg, p.JobAudio):
            self._audio(msg)
        elif isinstance(msg, p.JobResultAck):
            key = (msg.job_id, msg.attempt_id)
            self._progress.set()
            if self.unacked.pop(key, None) is not None:
                fields = self._unacked_fields.pop(key, {"job_id": msg.job_id, "attempt_id": msg.attempt_id})
                log.info("job_result.acked", **{**fields, "node_id": self.node_id})
        elif isinstance(msg, p.JobCancel):
            self._cancel(msg)
        elif isinstance(msg, p.Error):
            log.warning("node.scheduler_error", node_id=self.node_id, code=msg.code, message=msg.message)
        elif isinstance(msg, p.Reconnect):
            log.info("node.reconnect_hint", node_id=self.node_id, delay_ms=msg.delay_ms, reason=msg.reason)
            self._reconnect_after = msg.delay_ms / 1000
            if msg.url:  # dialled next; afterwards the list goes on in turn from there
                url = node_url(msg.url)
                if url not in self.urls:
                    self.urls.append(url)
                self._reconnect_to = self.urls.index(url)

    async def _assign(self, job: p.JobAssign) -> None:
        fields = self._fields(job)
        current = self.running.get(job.job_id)
        if current is not None and current.job.attempt_id == job.attempt_id:
            await self._send(p.JobAck(job_id=job.job_id, attempt_id=job.attempt_id))
            return
        kept = self.unacked.get((job.job_id, job.attempt_id))
        if kept is not None:  # offered again (its scheduler died): the work is done, send it
            log.info("job_result.resending", reason="offered again", **fields)
            await self._send(p.JobAck(job_id=job.job_id, attempt_id=job.attempt_id))
            await self._send(kept)
            return
        if self.draining or len(self.running) >= self.config.max_concurrent_jobs:
            reason = "draining" if self.draining else "at capacity"
            log.warning("job.rejected", reason=reason, **fields)
            await self._send(p.JobReject(job_id=job.job_id, attempt_id=job.attempt_id, reason=reason))
            return
        live: LiveInput | None = None
        if job.streaming:
            try:
                live = LiveInput(job)
            except EngineError as exc:
                await self._send(_failure(job, exc.code, str(exc)))
                return
        self.metrics.inc("node_jobs_received")
        log.info(
            "job.received",
            stages=job.stages,
            audio_bytes=len(job.audio),
            streaming=job.streaming,
            otel_trace_id=tracing.traceparent_trace_id(job.traceparent),
            **fields,
        )
        task = asyncio.create_task(
            self._run_job(job, live), name=f"job-{job.job_id}", context=contextvars.Context()
        )
        self.running[job.job_id] = _Running(job, task, live)
        await self._send(p.JobAck(job_id=job.job_id, attempt_id=job.attempt_id))

    def _audio(self, msg: p.JobAudio) -> None:
        r = self.running.get(msg.job_id)
        if r is None or r.live is None or r.job.attempt_id != msg.attempt_id:
            log.debug("job_audio.unknown_job", job_id=msg.job_id, attempt_id=msg.attempt_id, seq=msg.seq)
            return
        problem = r.live.add(msg)
        if problem is not None:
            log.warning("job_audio.refused", problem=problem, seq=msg.seq, **self._fields(r.job))

    def _cancel(self, msg: p.JobCancel) -> None:
        self.unacked.pop((msg.job_id, msg.attempt_id), None)
        self._unacked_fields.pop((msg.job_id, msg.attempt_id), None)
        r = self.running.get(msg.job_id)
        if r is not None and r.job.attempt_id == msg.attempt_id:
            log.info("job.cancelled", reason=msg.reason, **self._fields(r.job))
            self.metrics.inc("node_jobs_cancelled")
            r.task.cancel()

    async def _run_job(self, job: p.JobAssign, live: LiveInput | None = None) -> None:
        fields = self._fields(job)
        bind(**fields)  # this task's log context (contextvars: private to the task)
        span = self._job_span(job)
        result: p.JobResult | None = None
        try:
            await self._send(p.JobStarted(job_id=job.job_id, attempt_id=job.attempt_id))
            try:
                out = await self._pipeline(job, live, fields)
                result = p.JobResult(
                    job_id=job.job_id,
                    attempt_id=job.attempt_id,
                    success=True,
                    text_asr=out.text_asr,
                    text_translated=out.text_translated,
                    tts_audio=out.tts_audio,
                    tts_format="wav" if out.tts_audio else None,
                    tts_sample_rate=out.tts_sample_rate,
                    timings=out.timings,
                )
                self.metrics.inc("node_jobs_finished", outcome="ok")
                for stage in job.stages:
                    ms = getattr(out.timings, f"{stage}_ms", 0.0)
                    if ms:
                        self.metrics.node_stage.labels(stage).observe(ms / 1000)
                spoken = _audio_seconds(job, live)
                if spoken > 0 and out.timings.total_ms:
                    self.metrics.real_time_factor.observe(out.timings.total_ms / 1000 / spoken)
            except EngineError as exc:
                log.warning("job.engine_failed", code=exc.code, error=str(exc), **fields)
                result = _failure(job, exc.code, str(exc))
                self.metrics.inc("node_jobs_finished", outcome="failed")
            except Exception as exc:  # an engine bug must not kill the node (logged with its traceback)
                log.exception("job.crashed", error=repr(exc), **fields)
                result = _failure(job, "internal", f"engine crashed: {exc!r}")
                self.metrics.inc("node_jobs_finished", outcome="failed")
            self.unacked[(job.job_id, job.attempt_id)] = result
            self._unacked_fields[(job.job_id, job.attempt_id)] = fields
            while len(self.unacked) > self.config.max_unacked_results:
                old, _ = self.unacked.popitem(last=False)
                dropped = self._unacked_fields.pop(old, {"job_id": old[0]})
                log.warning("job_result.dropped_unacked", **{**dropped, "node_id": self.node_id})
            sent = await self._send(result)
            log.info("job_result.sent" if sent else "job_result.held", success=result.success, **fields)
        except asyncio.CancelledError:
            log.info("job.stopped", **fields)
            raise
        finally:
            if span is not None:
                if result is None:
                    tracing.fail(span, "cancelled", "the job was stopped")
                elif result.error is not None:
                    tracing.fail(span, result.error.code, result.error.message)
                span.end()
            r = self.running.get(job.job_id)
            if r is not None and r.job.attempt_id == job.attempt_id:
                del self.running[job.job_id]
            self._progress.set()

    async def _pipeline(
        self, job: p.JobAssign, live: LiveInput | None, fields: dict[str, Any]
    ) -> PipelineOutput:
        loop = asyncio.get_running_loop()
        jid, aid = job.job_id, job.attempt_id
        if live is None:

            def partial(stage: str, text: str) -> None:
                # engines call this from their worker thread
                msg = p.JobPartial(job_id=jid, attempt_id=aid, stage=stage, text=text)
                loop.call_soon_threadsafe(self._send_soon, msg)

            return await run_pipeline(self.engines, job, partial, fields, self.transcripts)

        def live_partial(stage: str, text: str, stable: int | None) -> None:
            self._send_soon(p.JobPartial(job_id=jid, attempt_id=aid, stage=stage, text=text, stable=stable))

        def speech_end(size: int, reason: str) -> None:
            self._send_soon(p.JobSpeechEnd(job_id=jid, attempt_id=aid, size=size, reason=reason))

        key = (job.session_id, job.tgt_lang)

        def keep(carry: Carry) -> None:  # the session's next utterance here starts from it
            self.carries[key] = carry
            self.carries.move_to_end(key)
            while self.carries and (
                len(self.carries) > MAX_CARRIES or next(iter(self.carries.values())).stale(carry.made)
            ):
                self.carries.popitem(last=False)

        carry = self.carries.pop(key, None)
        return await run_streaming(
            self.engines, job, live, live_partial, speech_end, fields, carry, keep, self.transcripts
        )


def _audio_seconds(job: p.JobAssign, live: LiveInput | None) -> float:
    """How long the job's speech is (a streamed job's whole utterance)."""
    if live is not None:
        return len(live.pcm) / 2 / live.rate
    try:
        return duration_seconds(job.audio, job.audio_format, job.sample_rate)
    except BadAudio:
        return 0.0


def _failure(job: p.JobAssign, code: str, message: str) -> p.JobResult:
    return p.JobResult(
        job_id=job.job_id,
        attempt_id=job.attempt_id,
        success=False,
        error=p.ErrorInfo(code=code, message=message),
    )


__all__ = ["FatalNodeError", "NodeAgent", "node_url"]
