"""Running the processes: event loop choice, scheduler server, node agent, all-in-one."""

from __future__ import annotations

import asyncio
import resource
import signal
import threading
from collections.abc import Coroutine
from typing import Any

import uvicorn
from starlette.applications import Starlette

from .engines.models import ModelManager
from .engines.registry import build
from .node.agent import NodeAgent
from .node.config import NodeConfig
from .observability.logging import get_logger
from .scheduler.config import SchedulerConfig
from .scheduler.edge.app import create_app
from .scheduler.edge.http_guard import MAX_HEAD_BYTES, GuardedWebSocketProtocol, guarded

log = get_logger("linguamesh.runtime")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when installed (measurably faster socket I/O), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class DrainingServer(uvicorn.Server):
    """uvicorn, with a graceful drain on the first SIGTERM or SIGINT (``scheduler/drain.py``):
    the server keeps serving while the scheduler stops taking work and lets what runs
    deliver, then shuts down. A second signal shuts down at once."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        # SIGHUP (systemctl reload, log rotation) reads the keys and credentials files again;
        # without a handler it would end the process
        hup = threading.current_thread() is threading.main_thread()  # (a server in a thread: none)
        if hup:
            self._loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            await super().serve(sockets)
        finally:
            if hup:
                self._loop.remove_signal_handler(signal.SIGHUP)

    def _reload(self) -> None:
        sched = getattr(self.app.state, "scheduler", None)
        if sched is None:
            return
        try:
            sched.reload()
        except ValueError as exc:  # a bad file: nothing changes, and the operator is told why
            log.error("scheduler.reload_failed", error=str(exc))

    def handle_exit(self, sig: int, frame: Any) -> None:
        sched = getattr(self.app.state, "scheduler", None)
        if self._drain is None and sched is not None and self._loop is not None and not self.should_exit:
            log.warning("scheduler.signal", signal=signal.Signals(sig).name, action="drain")
            self._loop.call_soon_threadsafe(self._start_drain, sched)
            return
        log.warning("scheduler.signal", signal=signal.Signals(sig).name, action="exit now")
        self.force_exit = self._drain is not None  # a second signal: do not wait any more
        super().handle_exit(sig, frame)

    def _start_drain(self, sched: Any) -> None:
        async def drain() -> None:
            try:
                await sched.drain()
            finally:
                self.should_exit = True

        self._drain = asyncio.get_running_loop().create_task(drain(), name="drain")


#: Bytes a WebSocket frame may exceed the message limit by and still get a coded error.
WS_MARGIN = 64 * 1024


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one (a server holds a descriptor per
    socket; 1,024 is the usual soft default). Returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft, hard


def make_server(config: SchedulerConfig, store: Any = None) -> DrainingServer:
    app = create_app(config, store)
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # our own limit and a little: a frame just over it gets a coded audio_too_large
        # error; past that the WebSocket layer closes with 1009 (message too big) before it
        # holds more (a fragmented message is bounded by this size too)
        ws_max_size=config.max_message_bytes + WS_MARGIN,
        # a bounded request head, and a deadline for it (edge/http_guard.py)
        http=guarded(config.request_head_timeout),
        # websockets' sans-I/O protocol, with a deadline on a fragmented message
        ws=GuardedWebSocketProtocol.with_deadline(config.ws_fragment_deadline),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        # past this many connections and requests at once, new requests get 503
        limit_concurrency=config.max_connections + 1000,
        # audio is base64 of PCM/WAV: deflate buys little and costs a copy per frame
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        timeout_graceful_shutdown=5,
        # who the client is behind a proxy is ours to say (--trusted-proxies,
        # scheduler/edge/proxies.py): uvicorn's own default trusts 127.0.0.1's headers
        proxy_headers=False,
        # TLS terminated here (--ssl-certfile/--ssl-keyfile): https:// and wss://
        ssl_certfile=config.ssl_certfile,
        ssl_keyfile=config.ssl_keyfile,
    )
    return DrainingServer(uv, app)


async def serve_scheduler(config: SchedulerConfig) -> None:
    soft, hard = raise_open_files_limit()
    log.info("process.open_files_limit", soft=soft, hard=hard)
    server = make_server(config)
    await server.serve()
    if not server.started:  # the application refused to start (its reason is logged too)
        reason = getattr(server.app.state, "startup_error", None)
        raise SystemExit(f"error: the scheduler did not start{': ' + reason if reason else ''}")


def model_manager(config: NodeConfig) -> ModelManager:
    """Host memory budget ``memory_limit_mb`` (files' size), GPU budget ``gpu_memory_limit_mb``
    per GPU (measured on the device; unset: no limit)."""
    limit_mb = float(config.models.get("memory_limit_mb", 8192))
    gpu_mb = config.models.get("gpu_memory_limit_mb")
    return ModelManager(int(limit_mb * 2**20), None if gpu_mb is None else int(float(gpu_mb) * 2**20))


async def serve_node(config: NodeConfig, handle_signals: bool = True) -> None:
    """Run a node until it stops; with ``handle_signals``, SIGTERM/SIGINT drain it (not in
    ``linguamesh up``, where the scheduler's server owns the signals)."""
    preload = config.models.get("preload", False)  # true, or a list of engine kinds
    engines = await asyncio.to_thread(
        build,
        config.engines,
        model_manager(config),
        preload=preload if isinstance(preload, list) else bool(preload),
    )
    try:
        caps = engines.capabilities()
        log.info(
            "node.engines_loaded",
            node_id=config.node_id,
            engines=[e.name for e in engines.all()],
            asr_languages=caps.asr_languages,
            nmt_pairs=[f"{a}-{b}" for a, b in caps.nmt_pairs],
            tts_languages=caps.tts_languages,
            unavailable=[f"{f.kind}: {f.error}" for f in engines.failures],
        )
        if not engines.all():
            raise SystemExit("no engine could be loaded; see the errors above")
        agent = NodeAgent(config, engines)
        if handle_signals:
            _drain_on_signals(agent)
        if not config.metrics_port:
            await agent.run()
            return
        from .node.http import create_node_app

        http = uvicorn.Server(
            uvicorn.Config(
                create_node_app(agent),
                host=config.metrics_host,
                port=config.metrics_port,
                log_config=None,
                lifespan="off",
            )
        )
        http_task = asyncio.create_task(http.serve(), name="node-http")
        try:
            await agent.run()
        finally:
            http.should_exit = True
            await asyncio.gather(http_task, return_exceptions=True)
    finally:
        engines.close()


def _drain_on_signals(agent: NodeAgent) -> None:
    """First SIGTERM/SIGINT: the node drains (finishes its jobs, gets their results acked);
    a second one stops it at once."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    def on_signal(sig: signal.Signals) -> None:
        task: asyncio.Task[Any]
        if agent.draining:
            log.warning("node.signal", node_id=agent.node_id, signal=sig.name, action="exit now")
            task = loop.create_task(agent.stop())
        else:
            log.warning("node.signal", node_id=agent.node_id, signal=sig.name, action="drain")
            task = loop.create_task(agent.drain(agent.config.drain_timeout))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
            return


async def serve_all(sched: SchedulerConfig, node: NodeConfig) -> None:
    """Scheduler and one local node in one process (``linguamesh up``)."""
    server = make_server(sched)
    node_task = asyncio.create_task(serve_node(node, handle_signals=False), name="local-node")
    try:
        await server.serve()
    finally:
        node_task.cancel()
        await asyncio.gather(node_task, return_exceptions=True)
