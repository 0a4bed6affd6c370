"""The scheduler's ASGI application (Starlette). Resources live in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from ...state.base import StateStore
from ...state.memory import MemoryStateStore
from ..cluster.membership import InstanceIdTaken
from ..config import SchedulerConfig
from ..service import Scheduler
from . import api, pages
from .ws_node import node_endpoint
from .ws_session import session_endpoint


def create_app(config: SchedulerConfig, store: StateStore | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if store is not None:
            state: StateStore = store
        elif config.shared_state:
            from ...state.redis import RedisStateStore

            state = RedisStateStore(
                config.redis_url or "redis://localhost:6379/0",
                limits=config.store_limits(),
                sentinel=config.sentinel(),
                replicas=config.replicas_to_confirm(),
                wait_ms=config.redis_wait_ms,
            )
        else:
            state = MemoryStateStore(limits=config.store_limits())
        sched = Scheduler(config, state)
        app.state.scheduler = sched
        try:
            await sched.start()
        except InstanceIdTaken as exc:
            app.state.startup_error = str(exc)
            await state.close()
            raise
        try:
            yield
        finally:
            await sched.stop()

    routes = [
        WebSocketRoute("/ws/session", session_endpoint),
        WebSocketRoute("/ws/node", node_endpoint),
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", api.metrics),
        Route("/api/v1/nodes", api.nodes),
        Route("/api/v1/pools", api.pools),
        Route("/api/v1/languages", api.languages),
        Route("/api/v1/jobs/{job_id}", api.job),
        Route("/api/v1/admin/reload", api.reload, methods=["POST"]),
        Route("/api/v1/usage", api.usage),
        *pages.routes,
    ]
    return Starlette(routes=routes, lifespan=lifespan)
