"""HTTP API: health, nodes, pools, languages, jobs."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...observability.metrics import CONTENT_TYPE
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
        "instance_id": s.config.instance_id,
    }
    strict = request.query_params.get("strict") in ("1", "true", "yes")
    ok = not problems and not (strict and degraded)
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    s = _sched(request)
    refused = None if s.config.metrics_public else denied(request)
    return refused or Response(s.metrics.render(), media_type=CONTENT_TYPE)


def nodes_data(s: Scheduler) -> list[dict[str, Any]]:
    now = s.clock()
    out = []
    for nc in s.nodes.values():
        view = s.store.nodes().get(nc.node_id)
        if view is None:
            continue
        caps = view.capabilities
        out.append(
            {
                "node_id": nc.node_id,
                "version": nc.version,
                "pool": view.pool,
                "online": view.online,
                "max_concurrent_jobs": view.max_concurrent_jobs,
                "reserved": view.reserved,
                "running_jobs": view.running_jobs,
                "last_heartbeat_s_ago": round(now - nc.last_seen, 3),
                "capabilities": {
                    "asr_languages": sorted(caps.asr),
                    "repair_languages": sorted(caps.repair),
                    "nmt_pairs": sorted([a, b] for a, b in caps.nmt),
                    "tts_languages": sorted(caps.tts),
                },
                "models": [{"name": m.name, "kind": m.kind, "languages": m.languages} for m in nc.models],
                "hardware": nc.hardware,
                "model_stats": nc.model_stats,
            }
        )
    return sorted(out, key=lambda n: str(n["node_id"]))


@operator_only
async def nodes(request: Request) -> Response:
    return JSONResponse({"nodes": nodes_data(_sched(request))})


def pools_data(s: Scheduler) -> list[dict[str, Any]]:
    pools: dict[str, dict[str, Any]] = {}
    for view in s.store.nodes().all_nodes():
        entry = pools.setdefault(view.pool, {"name": view.pool, "nodes": [], "free_slots": 0, "slots": 0})
        entry["nodes"].append(view.node_id)
        entry["free_slots"] += max(view.free_slots, 0)
        entry["slots"] += view.max_concurrent_jobs
    return sorted(pools.values(), key=lambda e: str(e["name"]))


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
    s = _sched(request)
    view = s.job_view(request.path_params["job_id"])
    if view is None:
        return JSONResponse({"error": {"code": "not_found", "message": "no such job"}}, status_code=404)
    return JSONResponse(view)
