"""Pure conversions between a job or session and what the state store keeps of it.

Nothing here does I/O: a job's log fields, the record another instance needs to
take a job over (audio included), and the way back from such a record.
"""

from __future__ import annotations

import base64
from typing import Any

from .. import protocol as p
from ..core.ids import JobId, NodeId, SessionId, TraceId
from ..core.jobs import Job, JobState
from ..core.nodes import NodeCapabilities
from ..state.base import JobRecord, SessionRecord
from .sessions.session import Session, SessionSettings

_STATES = {s.value: s for s in JobState}


def job_fields(job: Job) -> dict[str, Any]:
    """The fields every log record about a job carries."""
    return {
        "trace_id": job.trace_id,
        "session_id": job.session_id,
        "job_id": job.job_id,
        "node_id": job.node_id,
        "utterance_index": job.utterance_index,
        "attempt_id": job.attempt_id,
    }


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
        "spoken_at": job.spoken_at,
        "preferred_node_id": job.preferred_node_id,
        "tts": tts,
        "partials": partials,
    }


def job_record(
    job: Job, owner: str, tts: bool, partials: bool, deadline: float, *, with_data: bool = False
) -> JobRecord:
    """The job's record in the store; ``with_data`` adds what a take-over needs."""
    data = job_data(job, tts, partials) if with_data else {}
    if with_data:
        data["excluded"] = sorted(job.excluded)
    return JobRecord(
        job_id=job.job_id,
        owner=owner,
        state=job.state.value,
        attempt_id=job.attempt_id,
        node_id=job.node_id,
        deadline=deadline,
        data=data,
    )


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
        spoken_at=d.get("spoken_at"),
        preferred_node_id=d.get("preferred_node_id"),
    )
    job.state = _STATES.get(state, JobState.CREATED)
    job.attempt_id = attempt_id
    job.node_id = NodeId(node_id) if node_id else None
    if job.node_id is not None:
        job.attempt_nodes[attempt_id] = job.node_id
    excluded = d.get("excluded")
    if excluded:
        job.excluded = {NodeId(n) for n in excluded}
    return job, bool(d.get("tts", True)), bool(d.get("partials", True))


def session_record(session: Session, owner: str) -> SessionRecord:
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
            "end_of_speech_ms": st.end_of_speech_ms,
            "room": st.room,
            "room_key_hash": st.room_key_hash,
            "identity": st.identity,
            "key_id": st.key_id,
            "started_at": st.started_at,
            "title": st.title,
            "presenter": st.presenter,
            "langs_granted": st.langs_granted,
        },
        owner=owner,
        max_index=session.utterances.max_index,
    )


def settings_from_record(rec: SessionRecord) -> SessionSettings:
    st = rec.settings
    return SessionSettings(
        src_lang=st["src_lang"],
        tgt_langs=list(st["tgt_langs"]),
        tts=bool(st["tts"]),
        partials=bool(st["partials"]),
        audio_format=st["audio_format"],
        sample_rate=int(st["sample_rate"]),
        preferred_node_id=st.get("preferred_node_id"),
        end_of_speech_ms=st.get("end_of_speech_ms"),
        room=st.get("room"),
        room_key_hash=st.get("room_key_hash"),
        identity=st.get("identity"),
        key_id=st.get("key_id"),
        started_at=float(st.get("started_at") or 0.0),
        title=str(st.get("title") or ""),
        presenter=str(st.get("presenter") or ""),
        langs_granted=list(st["langs_granted"]) if st.get("langs_granted") is not None else None,
    )


def capabilities(c: p.Capabilities) -> NodeCapabilities:
    return NodeCapabilities(
        asr=frozenset(c.asr_languages),
        repair=frozenset(c.repair_languages),
        nmt=frozenset((a, b) for a, b in c.nmt_pairs),
        tts=frozenset(c.tts_languages),
    )


def limits(max_message_bytes: int, max_utterance_seconds: float) -> p.Limits:
    """The limits announced to clients and nodes."""
    return p.Limits(max_message_bytes=max_message_bytes, max_utterance_seconds=max_utterance_seconds)
