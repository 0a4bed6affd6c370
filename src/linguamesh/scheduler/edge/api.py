"""HTTP API: health, nodes, pools, languages, jobs."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...observability.metrics import CONTENT_TYPE
from ..overview import cluster_nodes, find_job, pools_data
from ..service import Scheduler
from .access import denied, operator_only


def _sched(request: Request) -> Scheduler:
    return request.app.state.scheduler  # type: ignore[no-any-return]


async def healthz(request: Request) -> Response:
    s = _sched(request)
    return JSONResponse(
        {
            "status": "ok",
            "instance_id": s.config.instance_id,
            "uptime_s": round(time.time() - s.started_at, 1),
            "nodes": len(s.nodes),
            "sessions": len(s.sessions),
            "jobs_in_flight": len(s.runner.runs),
        }
    )


async def readyz(request: Request) -> Response:
    """Ready to take work: started and its state store answers (503 otherwise). With no node
    connected it is ``degraded``: still 200 (sessions are accepted and wait), unless
    ``?strict=1`` asks for 503 then too."""
    s = _sched(request)
    problems = await s.readiness_problems()
    degraded = s.degraded()
    status = "not_ready" if problems else ("degraded" if degraded else "ready")
    body = {
        "ready": not problems,
        "status": status,
        "problems": problems,
        "degraded": degraded,
        "warnings": s.store_warnings,
        "instance_id": s.config.instance_id,
    }
    strict = request.query_params.get("strict") in ("1", "true", "yes")
    ok = not problems and not (strict and degraded)
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    s = _sched(request)
    refused = None if s.config.metrics_public else denied(request)
    return refused or Response(s.metrics.render(), media_type=CONTENT_TYPE)


@operator_only
async def nodes(request: Request) -> Response:
    return JSONResponse({"nodes": await cluster_nodes(_sched(request))})


@operator_only
async def pools(request: Request) -> Response:
    return JSONResponse({"pools": pools_data(_sched(request))})


async def languages(request: Request) -> Response:
    s = _sched(request)
    # translation pairs; a same-language session (transcribe and speak again) is possible
    # but is not what the pages offer
    pairs = sorted((a, b) for a, b in s.servable_pairs() if a != b)
    return JSONResponse(
        {
            "pairs": [{"src": a, "tgt": b} for a, b in pairs],
            "src_languages": sorted({a for a, _ in pairs}),
            "tgt_languages": sorted({b for _, b in pairs}),
        }
    )


@operator_only
async def job(request: Request) -> Response:
    view = await find_job(_sched(request), request.path_params["job_id"])
    if view is None:
        return JSONResponse({"error": {"code": "not_found", "message": "no such job"}}, status_code=404)
    return JSONResponse(view)


@operator_only
async def reload(request: Request) -> Response:
    """``POST /api/v1/admin/reload`` — read the API keys and node credentials files again
    (as SIGHUP does). A bad file changes nothing: 400 with the reason."""
    try:
        return JSONResponse(_sched(request).reload())
    except ValueError as exc:
        return JSONResponse({"error": {"code": "bad_message", "message": str(exc)}}, status_code=400)


@operator_only
async def usage(request: Request) -> Response:
    """``GET /api/v1/usage`` — every API key's totals across instances: sessions,
    utterances, jobs and seconds of audio."""
    return JSONResponse({"keys": await _sched(request).store.usage()})
