"""Every Redis key LinguaMesh uses, in one place. Versioned: ``sched:v1:``.

| key | type | holds |
|---|---|---|
| ``sched:v1:nodes`` | set | ids of registered nodes |
| ``sched:v1:node:{node_id}`` | hash | caps (JSON), max, owner (instance), pool, hb (ms), running |
| ``sched:v1:pool:{name}:members`` | set | node ids of a pool (pool = sorted language set) |
| ``sched:v1:slots:{node_id}`` | zset | reserved slots: member ``job_id:attempt``, score = expiry (ms) |
| ``sched:v1:req:{session_id}`` | hash | request key (``r:<request_id>``, ``u:<index>``) -> job id |
| ``sched:v1:session:{session_id}`` | hash | trace_id, tokens, settings (JSON), owner, max_index |
| ``sched:v1:seqno:{session_id}`` | string | last event seq of the session |
| ``sched:v1:history:{session_id}`` | stream | the replay window: events, entry id ``<seq>-0``, field ``d`` = event JSON; bounded by count and bytes |
| ``sched:v1:history:{session_id}:bytes`` | string | bytes of the events in the window |
| ``sched:v1:history:{session_id}:evicted`` | string | every event up to this seq left the window by its bounds or an ack (a gap for a replay; a superseded draft is a hole, not a gap) |
| ``sched:v1:history:{session_id}:drafts`` | hash | draft key (``<utterance>:<tgt_lang>``) -> the seq of its latest draft in the window |
| ``sched:v1:transcript:{session_id}`` | stream | finished results without speech, entry id ``<seq>-0``, field ``d``; lives the retention time after the session |
| ``sched:v1:transcript:{session_id}:meta`` | hash | view_token, src_lang, tgt_langs (JSON), trace_id, ended_at |
| ``sched:v1:events:{session_id}`` | pub/sub channel | the session's last seq, after every append (viewers on any instance) |
| ``sched:v1:key:{key_id}:sessions`` | zset | the key's open sessions, score = when their count lapses (ms) |
| ``sched:v1:key:{key_id}:audio:{hour}`` | string | seconds of audio charged to the key in that clock hour |
| ``sched:v1:key:{key_id}:usage`` | hash | the key's usage totals: sessions, utterances, jobs, audio_seconds |
| ``sched:v1:keys`` | set | key ids with usage |
| ``sched:v1:room:{room}`` | hash | key (SHA-256 of the room key), session_id, view_token |
| ``sched:v1:pending:{session_id}:{tgt}`` | zset | utterance indices whose result is not released yet |
| ``sched:v1:done:{session_id}:{tgt}`` | hash | index -> finished result waiting for earlier ones |
| ``sched:v1:job:{job_id}`` | hash | owner, state, attempt, node, deadline (ms), data (JSON) |
| ``sched:v1:jobs:active`` | zset | job ids by deadline (ms): the sweeper's index |
| ``sched:v1:instance:{id}`` | string | liveness of a scheduler instance (PX TTL) |
| ``sched:v1:instances`` | set | instance ids seen |
| ``sched:v1:instances:seen`` | hash | instance id -> last heartbeat (ms); ids silent past the prune bound go, with their inbox |
| ``sched:v1:inbox:{id}`` | stream | messages for instance ``id`` (consumer group ``g``; field ``m``: a MessagePack array of messages, see ``protocol/inbox.py``) |
"""

from __future__ import annotations

PREFIX = "sched:v1:"
NODES = PREFIX + "nodes"
JOBS_ACTIVE = PREFIX + "jobs:active"
INSTANCES = PREFIX + "instances"
INSTANCES_SEEN = PREFIX + "instances:seen"
INBOX_GROUP = "g"


def node(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


def pool_members(pool: str) -> str:
    return f"{PREFIX}pool:{pool}:members"


def slots(node_id: str) -> str:
    return f"{PREFIX}slots:{node_id}"


def requests(session_id: str) -> str:
    return f"{PREFIX}req:{session_id}"


def session(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


def seqno(session_id: str) -> str:
    return f"{PREFIX}seqno:{session_id}"


def history(session_id: str) -> str:
    return f"{PREFIX}history:{session_id}"


def history_bytes(session_id: str) -> str:
    return history(session_id) + ":bytes"  # the scripts derive it the same way


def history_drafts(session_id: str) -> str:
    return history(session_id) + ":drafts"  # the scripts derive it the same way


def history_evicted(session_id: str) -> str:
    return history(session_id) + ":evicted"  # the scripts derive it the same way


def transcript(session_id: str) -> str:
    return f"{PREFIX}transcript:{session_id}"  # the scripts derive it from history()


def transcript_meta(session_id: str) -> str:
    return transcript(session_id) + ":meta"


def listeners(session_id: str) -> str:
    return f"{PREFIX}listeners:{session_id}"


def listeners_since(session_id: str) -> str:
    return listeners(session_id) + ":since"


def room(room_id: str) -> str:
    return f"{PREFIX}room:{room_id}"


def room_sessions(room_id: str) -> str:
    return f"{PREFIX}room:{room_id}:sessions"


def key_sessions(key_id: str) -> str:
    return f"{PREFIX}key:{key_id}:sessions"


def key_audio(key_id: str, hour: int) -> str:
    return f"{PREFIX}key:{key_id}:audio:{hour}"


def key_usage(key_id: str) -> str:
    return f"{PREFIX}key:{key_id}:usage"


KEYS_USED = PREFIX + "keys"


def events_channel(session_id: str) -> str:
    """Pub/sub: the session's last seq, published by every script that numbers events."""
    return f"{PREFIX}events:{session_id}"


def pending(session_id: str, tgt: str) -> str:
    return f"{PREFIX}pending:{session_id}:{tgt}"


def done(session_id: str, tgt: str) -> str:
    return f"{PREFIX}done:{session_id}:{tgt}"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def instance(instance_id: str) -> str:
    return f"{PREFIX}instance:{instance_id}"


def inbox(instance_id: str) -> str:
    return f"{PREFIX}inbox:{instance_id}"
