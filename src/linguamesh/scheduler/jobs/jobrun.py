"""``JobRun``: everything the scheduler holds about one running job, in one object."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...core.ids import NodeId
from ...core.jobs import Job
from ...protocol import AsrPartial
from .spans import JobSpans

if TYPE_CHECKING:
    from ..sessions.stream import LiveUtterance


@dataclass(slots=True, eq=False)
class JobRun:
    """A job in flight here: the core's :class:`Job` plus what only the shell needs.

    Owned by the runner (``Runner.runs``); the dispatcher's waiting queue refers to
    the same object while the job waits for a node."""

    job: Job
    #: the client asked for synthesized speech / partial transcripts
    tts: bool
    partials: bool
    #: partial transcripts are sent once per utterance: by the job of the first target language
    first_tgt: bool = True
    #: the next selection is the job's first (logged and reported as queued)
    first_selection: bool = True
    #: a job's events are handled one at a time, in order
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    #: a slot to release together with the job's final record (shared state)
    pending_release: tuple[NodeId, int] | None = None
    #: the runner no longer holds the job (it ended, or another instance runs it)
    gone: bool = False
    #: the utterance is still being spoken (streamed); its audio so far
    live: LiveUtterance | None = None
    #: the attempt (node, attempt) the live audio is forwarded to as it arrives
    streamed_to: tuple[NodeId, int] | None = None
    #: a live job handed over to the instance holding its node: that instance, and how
    #: many bytes of the utterance it has (the rest is relayed to it as it arrives)
    relayed_to: str | None = None
    relayed_len: int = 0
    #: server-side end of speech: the node ends the utterance after this much silence
    end_of_speech_ms: int | None = None
    #: the last partial transcript sent for the job (a translation draft repeats it)
    last_partial: str = ""
    #: a partial was sent to the client (time-to-first-partial metric)
    partial_sent: bool = False
    #: drafts are sent at most one per PARTIAL_INTERVAL per kind: when the last went out,
    #: the latest ones held back meanwhile (by stage), and the timer that sends them
    partial_at: dict[str, float] = field(default_factory=dict)
    held_partials: dict[str, AsrPartial] = field(default_factory=dict)
    partial_timer: asyncio.TimerHandle | None = None
    #: the job's OpenTelemetry spans (tracing on); a job handed over by another instance
    #: continues that instance's trace (``traceparent``)
    spans: JobSpans | None = None
    traceparent: str | None = None

    def disarm(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()
