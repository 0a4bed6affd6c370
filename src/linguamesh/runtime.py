"""Running the processes: event loop choice, scheduler server, node agent, all-in-one."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import uvicorn

from .engines.models import ModelManager
from .engines.registry import build
from .node.agent import NodeAgent
from .node.config import NodeConfig
from .observability.logging import get_logger
from .scheduler.app import create_app
from .scheduler.config import SchedulerConfig

log = get_logger("linguamesh.runtime")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when installed (measurably faster socket I/O), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def make_server(config: SchedulerConfig, store: Any = None) -> uvicorn.Server:
    app = create_app(config, store)
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # four times our own limit: a frame up to that gets a coded audio_too_large error;
        # past it the WebSocket layer closes with 1009 (message too big) before reading it
        ws_max_size=config.max_message_bytes * 4,
        # audio is base64 of PCM/WAV: deflate buys little and costs a copy per frame
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(uv)


async def serve_scheduler(config: SchedulerConfig) -> None:
    server = make_server(config)
    await server.serve()


def model_manager(config: NodeConfig) -> ModelManager:
    limit_mb = float(config.models.get("memory_limit_mb", 8192))
    return ModelManager(int(limit_mb * 1024 * 1024))


async def serve_node(config: NodeConfig) -> None:
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
        if not config.metrics_port:
            await agent.run()
            return
        from .node.http import create_node_app

        http = uvicorn.Server(
            uvicorn.Config(
                create_node_app(agent),
                host="127.0.0.1",
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


async def serve_all(sched: SchedulerConfig, node: NodeConfig) -> None:
    """Scheduler and one local node in one process (``linguamesh up``)."""
    server = make_server(sched)
    node_task = asyncio.create_task(serve_node(node), name="local-node")
    try:
        await server.serve()
    finally:
        node_task.cancel()
        await asyncio.gather(node_task, return_exceptions=True)
