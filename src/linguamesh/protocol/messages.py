"""Every message of wire protocol v1 (``docs/protocol.md``) as a typed msgspec Struct.

One JSON object per WebSocket text frame, discriminated by ``type``. Audio
travels as base64 in JSON; msgspec decodes ``bytes`` fields from base64 and
encodes them back, so structs hold raw bytes.
"""

from __future__ import annotations

from typing import Literal

import msgspec

PROTOCOL_VERSION = 1

AudioFormat = Literal["pcm16", "wav"]
JobStatusValue = Literal["queued", "assigned", "processing", "retrying"]
ResultStatus = Literal["ok", "failed"]
Stage = Literal["asr", "repair", "nmt", "tts"]


class _Msg(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    pass


# ---------------------------------------------------------------- shared parts


class ErrorInfo(msgspec.Struct, omit_defaults=True):
    code: str
    message: str


class Timings(msgspec.Struct, omit_defaults=True):
    queue_ms: float = 0.0
    asr_ms: float = 0.0
    repair_ms: float = 0.0
    nmt_ms: float = 0.0
    tts_ms: float = 0.0
    total_ms: float = 0.0


class Limits(msgspec.Struct, omit_defaults=True):
    max_message_bytes: int
    max_utterance_seconds: float
    sample_rate: int = 16000


class ResumeInfo(msgspec.Struct):
    session_id: str
    resume_token: str
    last_seq: int = 0


class Capabilities(msgspec.Struct, omit_defaults=True):
    asr_languages: list[str] = []
    nmt_pairs: list[tuple[str, str]] = []
    tts_languages: list[str] = []
    repair_languages: list[str] = []
    semantic_languages: list[str] = []
    #: Our addition: the node takes streaming jobs (``job_assign.streaming``, ``job_audio``).
    streaming: bool = False


class ModelInfo(msgspec.Struct, omit_defaults=True):
    name: str
    kind: str
    languages: list[str] = []


# ---------------------------------------------------------------- client -> scheduler


class SessionInit(_Msg, tag="session_init", kw_only=True):
    protocol_version: int
    src_lang: str
    tgt_lang: str
    extra_tgt_langs: list[str] = []
    tts: bool = True
    partials: bool = True
    audio_format: AudioFormat = "pcm16"
    sample_rate: int = 16000
    preferred_node_id: str | None = None
    resume: ResumeInfo | None = None
    #: Our addition: who ends an utterance streamed as ``audio_chunk``s. ``client``: the
    #: client (``is_final``; the idle gap and the length limit as in v1). ``server``: the
    #: node's VAD, after ``end_of_speech_ms`` of trailing silence; the client may stream
    #: continuously.
    end_of_speech: Literal["client", "server"] = "client"
    end_of_speech_ms: int | None = None
    #: Our additions: a viewer link that outlives the session (``scheduler/rooms.py``).
    room: str | None = None
    room_key: str | None = None
    #: Our addition: an access token (a JWT from the operator's backend) when the
    #: scheduler requires one (``--api-keys``; ``docs/protocol.md``).
    token: str | None = None
    #: Our additions: what the event is called and who speaks (at most 120 characters
    #: each): shown to viewers and in transcripts.
    title: str | None = None
    presenter: str | None = None


class Utterance(_Msg, tag="utterance", kw_only=True):
    utterance_index: int
    audio: bytes
    audio_format: AudioFormat | None = None
    sample_rate: int | None = None
    request_id: str | None = None


class AudioChunk(_Msg, tag="audio_chunk", kw_only=True):
    seq: int
    audio: bytes
    is_final: bool = False


class Ack(_Msg, tag="ack", kw_only=True):
    seq: int


class SessionClose(_Msg, tag="session_close", kw_only=True):
    pass


ClientMessage = SessionInit | Utterance | AudioChunk | Ack | SessionClose


# ---------------------------------------------------------------- scheduler -> client
# Every event to a client carries a per-session increasing ``seq``.


class SessionInitAck(_Msg, tag="session_init_ack", kw_only=True):
    seq: int = 0
    session_id: str
    trace_id: str
    resume_token: str
    protocol_version: int = PROTOCOL_VERSION
    limits: Limits
    replayed: int = 0
    view_token: str | None = None
    #: Our addition: what the client should know before it speaks, e.g. ``no_available_node``
    #: "no node serves en->fr now; pools: en-es. Its utterances wait up to 10 s for one,
    #: then fail" (per target language). Absent when there is nothing to say.
    warnings: list[ErrorInfo] = msgspec.field(default_factory=list)


class JobStatus(_Msg, tag="job_status", kw_only=True):
    seq: int = 0
    utterance_index: int
    tgt_lang: str
    status: JobStatusValue
    node_id: str | None = None
    reason: str | None = None
    queue_position: int | None = None
    #: Our addition: ``reason`` explained for people, e.g. for ``no_available_pool``
    #: "no node serves en->de now; pools: en-es" (the pools that exist).
    detail: str | None = None


class AsrPartial(_Msg, tag="asr_partial", kw_only=True):
    seq: int = 0
    utterance_index: int
    text: str
    #: Our additions (streaming): the first ``stable`` characters of ``text`` will not
    #: change; ``translation`` is the draft translation into ``tgt_lang`` of the stable
    #: sentences so far.
    stable: int | None = None
    tgt_lang: str | None = None
    translation: str | None = None


class TranslationResult(_Msg, tag="translation_result", kw_only=True):
    seq: int = 0
    utterance_index: int
    tgt_lang: str
    job_id: str
    status: ResultStatus
    text_asr: str = ""
    text_translated: str = ""
    tts_audio: bytes | None = None
    tts_format: str | None = None
    tts_sample_rate: int | None = None
    timings: Timings = msgspec.field(default_factory=Timings)
    node_id: str | None = None
    error: ErrorInfo | None = None
    trace_id: str | None = None
    #: Our additions: when the utterance began to be spoken (epoch seconds, the scheduler's
    #: clock) and its length, for subtitles with utterance times.
    spoken_at: float | None = None
    audio_seconds: float | None = None


class Error(_Msg, tag="error", kw_only=True):
    seq: int = 0
    code: str
    message: str
    ref: str | None = None


class SessionClosed(_Msg, tag="session_closed", kw_only=True):
    seq: int = 0
    reason: str


class Reconnect(_Msg, tag="reconnect", kw_only=True):
    """Our addition (docs/protocol.md): the scheduler is going away (draining); connect
    again after ``delay_ms`` — to ``url`` when given, else to the same address — and resume.
    Sent on client and node sockets just before the scheduler closes them (1012)."""

    delay_ms: int
    reason: str
    url: str | None = None


SessionEvent = SessionInitAck | JobStatus | AsrPartial | TranslationResult | Error | SessionClosed | Reconnect


# ---------------------------------------------------------------- node -> scheduler


class NodeRegister(_Msg, tag="node_register", kw_only=True):
    protocol_version: int
    node_id: str
    version: str
    capabilities: Capabilities
    max_concurrent_jobs: int = 1
    token: str | None = None
    models: list[ModelInfo] = []
    hardware: dict[str, str | int | float] | None = None
    unacked_results: list[str] = []


class NodeHeartbeat(_Msg, tag="node_heartbeat", kw_only=True):
    running_jobs: int
    load: float | None = None
    capabilities: Capabilities | None = None
    #: Optional extension (unknown fields are ignored by v1 peers): per-model metrics.
    model_stats: dict[str, dict[str, float]] | None = None
    #: Our addition: the node is shutting down; it takes no new jobs (it reports itself full)
    #: and finishes the ones it runs.
    draining: bool = False


class JobAck(_Msg, tag="job_ack", kw_only=True):
    job_id: str
    attempt_id: int


class JobReject(_Msg, tag="job_reject", kw_only=True):
    job_id: str
    attempt_id: int
    reason: str


class JobStarted(_Msg, tag="job_started", kw_only=True):
    job_id: str
    attempt_id: int


class JobPartial(_Msg, tag="job_partial", kw_only=True):
    job_id: str
    attempt_id: int
    stage: str
    text: str
    #: Our addition: with stage ``asr``, the first ``stable`` characters will not change.
    stable: int | None = None


class JobSpeechEnd(_Msg, tag="job_speech_end", kw_only=True):
    """Our addition: in a streaming job the node proposes where the utterance ends: the
    first ``size`` bytes of the job's audio (the node finishes the job on them). The
    scheduler closes the utterance there and starts the next one with the audio after it.
    ``reason``: ``pause`` (the VAD heard ``end_of_speech_ms`` of silence), ``sentence``
    (a committed sentence and a gap after it) or ``length`` (too long without one)."""

    job_id: str
    attempt_id: int
    size: int
    #: Our addition (absent: ``pause``).
    reason: str | None = None


class JobResult(_Msg, tag="job_result", kw_only=True):
    job_id: str
    attempt_id: int
    success: bool
    text_asr: str = ""
    text_translated: str = ""
    tts_audio: bytes | None = None
    tts_format: str | None = None
    tts_sample_rate: int | None = None
    timings: Timings = msgspec.field(default_factory=Timings)
    error: ErrorInfo | None = None


NodeMessage = (
    NodeRegister | NodeHeartbeat | JobAck | JobReject | JobStarted | JobPartial | JobSpeechEnd | JobResult
)
#: the node messages about one job (each carries ``job_id`` and ``attempt_id``)
JobMessage = JobAck | JobReject | JobStarted | JobPartial | JobSpeechEnd | JobResult


# ---------------------------------------------------------------- scheduler -> node


class NodeRegisterAck(_Msg, tag="node_register_ack", kw_only=True):
    node_id: str
    heartbeat_interval_s: float
    pools: list[str]
    limits: Limits


class JobAssign(_Msg, tag="job_assign", kw_only=True):
    job_id: str
    attempt_id: int
    trace_id: str
    session_id: str
    utterance_index: int
    src_lang: str
    tgt_lang: str
    audio: bytes
    audio_format: AudioFormat
    sample_rate: int
    stages: list[Stage]
    deadline_ms: int
    #: Our additions (streaming): ``audio`` is the utterance so far; the rest follows as
    #: ``job_audio`` messages numbered from ``audio_seq``, the last with ``is_final``.
    streaming: bool = False
    audio_seq: int = 0
    #: the node ends the utterance itself after this much trailing silence (``job_speech_end``)
    end_of_speech_ms: int | None = None
    #: Our addition: the W3C trace context of the scheduler's ``attempt`` span (OpenTelemetry
    #: on); the node's spans continue that trace.
    traceparent: str | None = None


class JobAudio(_Msg, tag="job_audio", kw_only=True):
    """Our addition: more audio of a streaming job, in order (``seq`` counts from the
    assign's ``audio_seq``). With ``is_final`` the utterance is complete; ``size``, when
    given, is its whole length in bytes (the node drops audio it got beyond it)."""

    job_id: str
    attempt_id: int
    seq: int
    audio: bytes = b""
    is_final: bool = False
    size: int | None = None


class JobResultAck(_Msg, tag="job_result_ack", kw_only=True):
    job_id: str
    attempt_id: int


class JobCancel(_Msg, tag="job_cancel", kw_only=True):
    job_id: str
    attempt_id: int
    reason: str


SchedulerToNode = NodeRegisterAck | JobAssign | JobAudio | JobResultAck | JobCancel | Error | Reconnect
