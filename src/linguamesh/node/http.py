"""The node's local HTTP endpoint: ``/healthz`` (alive), ``/readyz`` (taking work) and
``/metrics`` (Prometheus)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..observability.metrics import CONTENT_TYPE
from .agent import NodeAgent


def create_node_app(agent: NodeAgent) -> Starlette:
    async def healthz(request: Request) -> Response:
        body = agent.health()
        # alive even when disconnected (it is retrying); 503 only when it can serve nothing
        ok = bool(body["engines"])
        status = "no_engines" if not ok else ("ok" if body["connected"] else "disconnected")
        return JSONResponse({"status": status, **body}, status_code=200 if ok else 503)

    async def readyz(request: Request) -> Response:
        """Ready = it can take jobs now: engines loaded, connected to a scheduler, not draining."""
        body = agent.health()
        problems = []
        if not body["engines"]:
            problems.append("no engine could be loaded")
        if not body["connected"]:
            problems.append("not connected to a scheduler (retrying)")
        if agent.draining:
            problems.append("draining: shutting down")
        ready = not problems
        return JSONResponse(
            {"ready": ready, "problems": problems, "node_id": agent.node_id},
            status_code=200 if ready else 503,
        )

    async def metrics(request: Request) -> Response:
        return Response(agent.metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )
