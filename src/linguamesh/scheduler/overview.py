"""What operators see of the cluster: nodes, pools, jobs, the overview of the admin page.

Every instance answers for the whole cluster. What the shared store keeps (the node
registry, job records) is read from it; what only one instance knows (the detail of the
nodes it holds, the jobs it runs and their history, its recent failures) is asked of
that instance through its inbox (a ``query``, answered within 2 s, or left out and
named in ``unanswered``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..core.ids import JobId
from ..core.jobs import JobState
from ..observability.metrics import COUNTERS
from ..state.base import DependencyDown

if TYPE_CHECKING:
    from .service import Scheduler


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
                "sitting_out_s": round(nc.sitting_out_until - now, 1) if nc.sitting_out_until else None,
                "instance_id": s.config.instance_id,
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


def pools_data(s: Scheduler) -> list[dict[str, Any]]:
    pools: dict[str, dict[str, Any]] = {}
    for view in s.store.nodes().all_nodes():
        entry = pools.setdefault(view.pool, {"name": view.pool, "nodes": [], "free_slots": 0, "slots": 0})
        entry["nodes"].append(view.node_id)
        entry["free_slots"] += max(view.free_slots, 0)
        entry["slots"] += view.max_concurrent_jobs
    return sorted(pools.values(), key=lambda e: str(e["name"]))


async def cluster_nodes(s: Scheduler) -> list[dict[str, Any]]:
    """Every node of the cluster, with the detail its instance knows."""
    out = nodes_data(s)
    for answer in (await s.remote.ask_all("nodes")).values():
        out += answer.get("nodes", [])
    return sorted(out, key=lambda n: str(n["node_id"]))


def job_view(s: Scheduler, job_id: str) -> dict[str, Any] | None:
    """A job this instance runs or ran recently, with its history."""
    run = s.runner.runs.get(JobId(job_id))
    job = run.job if run is not None else s.runner.finished.get(JobId(job_id))
    if job is None:
        return None
    session = s.sessions.get(job.session_id)
    st = session.settings if session is not None else None
    return {
        "job_id": job.job_id,
        "instance_id": s.config.instance_id,
        # who spoke it, by the session's access token (--api-keys)
        "identity": st.identity if st is not None else None,
        "key_id": st.key_id if st is not None else None,
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
            {"t": round(t - job.created_at, 6), "state": st, "attempt_id": a} for t, st, a in job.history
        ],
    }


async def find_job(s: Scheduler, job_id: str) -> dict[str, Any] | None:
    """A job of the cluster: from here, else from its owner (its record names it), else
    what its record says (the owner is gone or silent)."""
    view = job_view(s, job_id)
    if view is not None or not s.remote.shared:
        return view
    try:
        rec = await s.store.load_job(JobId(job_id))
    except DependencyDown:
        return None
    if rec is None:
        return None
    if rec.owner != s.config.instance_id:
        view = await s.remote.ask(rec.owner, "job", job_id)
        if view is not None:
            return view
    data = rec.data or {}
    return {
        "job_id": rec.job_id,
        "instance_id": rec.owner,
        "state": rec.state,
        "attempt_id": rec.attempt_id,
        "node_id": rec.node_id,
        "session_id": data.get("session_id"),
        "utterance_index": data.get("utterance_index"),
        "detail": "from the shared record: the job's instance did not answer",
    }


def instance_overview(s: Scheduler) -> dict[str, Any]:
    """What this instance knows: the nodes it holds, the jobs it runs, its recent jobs and
    failures, its sessions and queue."""
    now = s.clock()
    me = s.config.instance_id
    jobs = [
        {
            "job_id": j.job_id,
            "instance_id": me,
            "trace_id": j.trace_id,
            "session_id": j.session_id,
            "utterance_index": j.utterance_index,
            "pair": j.pair,
            "state": j.state.value,
            "attempt_id": j.attempt_id,
            "node_id": j.node_id,
            "age_s": round(now - j.created_at, 3),
            "last_reason": j.last_reason,
        }
        for j in (r.job for r in s.runner.runs.values())
    ]
    recent = [
        {"job_id": j.job_id, "instance_id": me, "trace_id": j.trace_id, "state": j.state.value,
         "node_id": j.node_id, "utterance_index": j.utterance_index, "pair": j.pair,
         "ms": round(((j.finished_at or now) - j.created_at) * 1000, 1)}
        for j in list(s.runner.finished.values())[-50:]
    ]  # fmt: skip
    return {
        "latency": latency_samples(s),
        "nodes": nodes_data(s),
        "jobs_in_flight": jobs,
        "recent_jobs": recent[::-1],
        "failures": [{**f, "instance_id": me} for f in list(s.runner.observer.failures)[::-1]],
        "sessions": len(s.sessions),
        "viewers": sum(s.admission.viewers.values()),
        "viewers_by_session": dict(s.admission.viewers),
        "session_list": sessions_data(s),
        "queue_depth": len(s.dispatcher.waiting),
    }


#: The admin page's latency figures cover the jobs finished in this window.
LATENCY_WINDOW_S = 900.0


def latency_samples(s: Scheduler) -> dict[str, list[float]]:
    """This instance's jobs completed in the window: ``after_speech`` (ms from the end of
    the utterance's speech to its result: what a listener waits) and ``job`` (ms from the
    job's creation to its result; for a streamed utterance that includes the speaking)."""
    now, wall = s.clock(), time.time()
    after: list[float] = []
    job_ms: list[float] = []
    for j in s.runner.finished.values():
        if (
            j.finished_at is None
            or now - j.finished_at > LATENCY_WINDOW_S
            or j.state is not JobState.COMPLETED
        ):
            continue
        job_ms.append(round((j.finished_at - j.created_at) * 1000, 1))
        ended = j.speech_ended_at or (j.spoken_at + j.audio_seconds if j.spoken_at is not None else None)
        if ended is not None:
            after.append(round(max(0.0, wall - (now - j.finished_at) - ended) * 1000, 1))
    return {"after_speech": after, "job": job_ms}


def latency_summary(samples: list[float]) -> dict[str, Any]:
    """How many, and the 50th, 90th and 99th percentiles (nearest rank), in ms."""
    ordered = sorted(samples)
    out: dict[str, Any] = {"jobs": len(ordered)}
    for q in (50, 90, 99):
        out[f"p{q}"] = ordered[max(0, -(-q * len(ordered) // 100) - 1)] if ordered else None
    return out


def sessions_data(s: Scheduler) -> list[dict[str, Any]]:
    """The sessions held here: who and what, its languages (listener ones too), and
    whether its speaker is connected (a closed tab lingers for the resume window)."""
    out = []
    for session in s.sessions.values():
        if session.life.gone:
            continue
        st = session.settings
        out.append({
            "session_id": session.session_id, "instance_id": s.config.instance_id,
            "title": st.title, "presenter": st.presenter, "room": st.room,
            "src_lang": st.src_lang, "tgt_langs": st.tgt_langs,
            "listener_langs": sorted(session.listener_langs),
            "connected": session.delivery.conn is not None,
            "age_s": round(time.time() - st.started_at, 1) if st.started_at else None,
        })  # fmt: skip
    return out


def health(merged: dict[str, Any], servable: set[tuple[str, str]]) -> dict[str, Any]:
    """The cluster at a glance, worst first: ``bad`` when nothing can be translated or a
    session asks for a pair no node serves, ``warn`` when jobs wait or an instance does not
    answer, else ``ok``; each problem in words."""
    bad: list[str] = []
    warn: list[str] = []
    if not merged["nodes"]:
        bad.append("no node is connected: nothing can be translated")
    unserved: dict[str, list[str]] = {}
    for sess in merged["session_list"]:
        for tgt in [*sess["tgt_langs"], *sess["listener_langs"]]:
            if tgt != sess["src_lang"] and (sess["src_lang"], tgt) not in servable:
                unserved.setdefault(f"{sess['src_lang']}->{tgt}", []).append(sess["session_id"])
    for pair, ids in sorted(unserved.items()):
        bad.append(f"no node serves {pair}, which {len(ids)} session(s) asked for ({', '.join(ids[:3])})")
    if merged["queue_depth"]:
        warn.append(f"{merged['queue_depth']} job(s) wait for a node")
    if merged["unanswered"]:
        warn.append(f"no answer from instance(s) {', '.join(merged['unanswered'])}")
    return {"status": "bad" if bad else "warn" if warn else "ok", "problems": bad + warn}


def counters(s: Scheduler) -> dict[str, float]:
    """This instance's counters as Prometheus writes them, without series still at 0."""
    out: dict[str, float] = {}
    for (name, labels), value in s.metrics.counters.values.items():
        if value == 0 and labels:  # the label values published at 0 from the start: noise here
            continue
        names = COUNTERS[name][1]
        pairs = ",".join(f"{k}={v}" for k, v in zip(names, labels, strict=True) if v)
        out[name + (f"{{{pairs}}}" if pairs else "")] = value
    return out


async def cluster_overview(s: Scheduler) -> dict[str, Any]:
    """The admin overview: every live instance's own part, merged; this one's counters."""
    mine = instance_overview(s)
    parts = {s.config.instance_id: mine, **(await s.remote.ask_all("overview"))}
    live = await _live(s)
    merged: dict[str, Any] = {
        "instance_id": s.config.instance_id,
        "time": time.time(),
        "instances": {
            i: {"sessions": p["sessions"], "queue_depth": p["queue_depth"], "nodes": len(p["nodes"])}
            for i, p in sorted(parts.items())
        },
        "unanswered": sorted(live - set(parts)),
        "pools": pools_data(s),
        "counters": counters(s),
    }
    for key in ("nodes", "jobs_in_flight", "recent_jobs", "failures", "session_list"):
        merged[key] = [
            x for p in parts.values() for x in p.get(key, [])
        ]  # (an older instance has no session_list)
    merged["nodes"].sort(key=lambda n: str(n["node_id"]))
    merged["sessions"] = sum(p["sessions"] for p in parts.values())
    merged["viewers"] = sum(p.get("viewers", 0) for p in parts.values())
    merged["queue_depth"] = sum(p["queue_depth"] for p in parts.values())
    # a session's viewers may be on any instance
    viewers: dict[str, int] = {}
    for p in parts.values():
        for sid, n in p.get("viewers_by_session", {}).items():
            viewers[sid] = viewers.get(sid, 0) + n
    for sess in merged["session_list"]:
        sess["viewers"] = viewers.get(sess["session_id"], 0)
    merged["session_list"].sort(key=lambda x: (not x["connected"], -(x["viewers"]), x["session_id"]))
    merged["latency"] = {
        "window_s": LATENCY_WINDOW_S,
        **{
            kind: latency_summary([x for p in parts.values() for x in p.get("latency", {}).get(kind, [])])
            for kind in ("after_speech", "job")
        },
    }
    merged["counter_help"] = {name: help_ for name, (help_, _) in COUNTERS.items()}
    merged["health"] = health(merged, set(s.servable_pairs()))
    return merged


async def _live(s: Scheduler) -> set[str]:
    if not s.remote.shared:
        return {s.config.instance_id}
    try:
        return await s.store.live_instances() | {s.config.instance_id}
    except DependencyDown:
        return {s.config.instance_id}


def answer(s: Scheduler, kind: str, arg: str) -> dict[str, Any] | None:
    """Another instance's query about what only this one knows."""
    if kind == "job":
        return job_view(s, arg)
    if kind == "overview":
        return instance_overview(s)
    if kind == "nodes":
        return {"nodes": nodes_data(s)}
    return None
