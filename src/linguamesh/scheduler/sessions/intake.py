"""Utterance intake: utterances become jobs.

Checks what the client sent (index order, duplicates, audio, rate limits), records
the utterance and its jobs in one store step, and hands each job to the runner. Whole
utterances come from the socket handler; streamed ones from the stream (``stream.py``),
which opens a live utterance here at its first audio and hands a buffered one over
whole when it closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ... import protocol as p
from ...audio import BadAudio, duration_seconds
from ...core.ids import NodeId, new_job_id
from ...core.jobs import Job
from ...core.languages import session_targets
from ...core.nodes import servable_targets
from ...core.ratelimit import TokenBucket
from ...core.stages import expand_stages
from ...observability.logging import get_logger
from ...observability.metrics import Metrics
from ...protocol import ErrorCode, ProtocolError
from ...state.base import DependencyDown, StateStore
from ..config import SchedulerConfig
from ..jobs.jobrun import JobRun
from ..jobs.runner import Runner
from ..records import job_fields, job_record
from .session import KEY_SESSION_LAPSE, Session

if TYPE_CHECKING:
    from .stream import LiveUtterance
    from .table import SessionTable

#: how often (seconds) a session's listener languages are read from the store, and how
#: long a new utterance waits for a read it started (then it goes on with the last one)
LISTENERS_READ_EVERY = 1.0
LISTENERS_WAIT = 0.05

log = get_logger("linguamesh.scheduler")


class Intake:
    def __init__(
        self,
        config: SchedulerConfig,
        store: StateStore,
        metrics: Metrics,
        clock: Callable[[], float],
        runner: Runner,
        table: SessionTable,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.runner = runner
        #: a key's options (``--api-keys``), read when a session of it is charged
        self.key_limits: Callable[[str], dict[str, int]] = lambda _key: {}
        #: the sessions' owner: a session's new jobs are registered with it
        self.table = table
        #: per client address: (utterances, audio seconds) token buckets
        self.by_ip: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    # ------------------------------------------------------------------ targets

    def most_targets(self, key_id: str | None) -> int:
        """Target languages per utterance of a session whose speaker's API key is
        ``key_id``: the scheduler's ``max_targets``, or the key's when lower."""
        most = self.config.max_targets
        if key_id is not None:
            most = min(most, self.key_limits(key_id).get("max_targets", most))
        return most

    async def utterance_targets(self, session: Session) -> list[str]:
        """The target languages of a new utterance: :meth:`targets`, after waiting at most
        ``LISTENERS_WAIT`` for a read of the listener languages that was due (a viewer on
        another instance then gets its language from the next utterance on; a store that
        stalls delays the utterance by no more than that)."""
        reading = self._read_if_due(session)
        if reading is not None:
            await asyncio.wait({reading}, timeout=LISTENERS_WAIT)
        return self.targets(session)

    def _read_if_due(self, session: Session) -> asyncio.Task[None] | None:
        """Start a read of the session's listener languages when one is due (at most once
        a second); the read started, or None."""
        now = self.clock()
        if now - session.listeners_read_at < LISTENERS_READ_EVERY:
            return None
        session.listeners_read_at = now
        return self.runner.tasks.spawn(self._read_listeners(session), "listeners")

    def targets(self, session: Session) -> list[str]:
        """The target languages of the session's next utterance: the speaker's, and those
        its viewers listen to (``core.languages.session_targets``). The listener languages
        are read from the store in the background, at most once a second; this never waits
        for that read (a store that stalls would hold the utterance, and a write after the
        stall could then outlive the utterance's refusal: :meth:`utterance_targets` waits
        50 ms at most); a viewer on this instance tells the session at once
        (``edge/listening.py``)."""
        st = session.settings
        self._read_if_due(session)
        if not session.listeners:
            return st.tgt_langs
        servable = servable_targets(self.store.nodes().all_nodes(), st.src_lang)
        granted = set(st.langs_granted) if st.langs_granted is not None else None
        targets, over = session_targets(
            st.tgt_langs,
            st.src_lang,
            session.listeners,
            time.time(),
            self.most_targets(st.key_id),
            servable,
            granted,
        )
        if over:
            log.info("listeners.over_targets", session_id=session.session_id, left_out=over)
        session.listener_langs.update(targets[len(st.tgt_langs) :])
        return targets

    async def _read_listeners(self, session: Session) -> None:
        try:
            session.listeners = await self.store.listeners(session.session_id)
        except DependencyDown:
            pass  # the last reading stays

    # ------------------------------------------------------------------ limits

    def _buckets(
        self, session: Session, now: float
    ) -> tuple[TokenBucket, TokenBucket, TokenBucket, TokenBucket]:
        c = self.config
        if session.utterances.buckets is None:
            session.utterances.buckets = (
                TokenBucket(c.session_utterances_per_s, c.session_utterance_burst, stamp=now),
                TokenBucket(c.session_audio_per_s, c.session_audio_burst, stamp=now),
            )
        ip = self.by_ip.get(session.peer)
        if ip is None:
            if len(self.by_ip) >= 10_000:  # forget addresses that have not sent for a while
                self.by_ip = {k: v for k, v in self.by_ip.items() if not (v[0].full(now) and v[1].full(now))}
            ip = self.by_ip[session.peer] = (
                TokenBucket(c.ip_utterances_per_s, c.ip_utterance_burst, stamp=now),
                TokenBucket(c.ip_audio_per_s, c.ip_audio_burst, stamp=now),
            )
        return session.utterances.buckets[0], session.utterances.buckets[1], ip[0], ip[1]

    def limit(self, session: Session, index: int, seconds: float | None) -> None:
        """Take one utterance (or, with ``seconds``, that much audio) from the session's and
        the address's buckets; ``rate_limited`` when either is empty (nothing is taken)."""
        now = self.clock()
        s_utt, s_audio, ip_utt, ip_audio = self._buckets(session, now)
        if seconds is None:  # an utterance costs one job per target language
            jobs = float(len(session.settings.tgt_langs))
            mine, address, amount, kind, what = (
                s_utt,
                ip_utt,
                jobs,
                "utterances",
                "jobs (utterances x targets)",
            )
        else:
            mine, address, amount, kind, what = s_audio, ip_audio, seconds, "audio", "seconds of audio"
        for bucket, scope in ((mine, "session"), (address, "ip")):
            wait = bucket.wait_for(amount, now)
            if wait > 0:
                self.metrics.inc("rate_limited", scope=scope, kind=kind)
                session.utterances.refused += 1
                if (
                    now - session.utterances.refused_logged_at >= 1.0
                ):  # one record a second for a flooding client
                    log.info("utterance.rate_limited", session_id=session.session_id, utterance_index=index,
                             scope=scope, kind=kind, peer=session.peer, refused=session.utterances.refused)  # fmt: skip
                    session.utterances.refused_logged_at = now
                    session.utterances.refused = 0
                retry = f"; try again in {wait:.1f}s" if wait != float("inf") else ""
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"this {scope} sends {what} faster than allowed ({bucket.rate:g}/s, burst {bucket.burst:g}){retry}",
                    ref=f"utterance {index}",
                )
        mine.take(amount, now)
        address.take(amount, now)

    def charge(self, session: Session, seconds: float) -> None:
        """Streamed audio already accepted (a chunk of an open utterance): charged to the
        session's and the address's audio buckets; a client streaming too fast waits at its
        next utterance."""
        now = self.clock()
        _, session_audio, _, ip_audio = self._buckets(session, now)
        for bucket in (session_audio, ip_audio):
            bucket.charge(seconds, now)

    async def utterance(self, session: Session, msg: p.Utterance) -> None:
        if msg.sample_rate is not None and not 0 < msg.sample_rate <= 192_000:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"field `sample_rate`: {msg.sample_rate} is out of range (1-192000)"
            )
        fmt = msg.audio_format or session.settings.audio_format
        rate = msg.sample_rate or session.settings.sample_rate
        try:
            await self.whole(session, msg.utterance_index, msg.audio, fmt, rate, msg.request_id)
        except ProtocolError as exc:  # every refusal says which utterance it concerns
            exc.ref = exc.ref or f"utterance {msg.utterance_index}"
            raise

    async def whole(
        self,
        session: Session,
        index: int,
        audio: bytes,
        fmt: str,
        rate: int,
        request_id: str | None,
    ) -> None:
        """A whole utterance: checked, recorded, its jobs started."""
        if not await self.admit(session, index):
            return
        try:
            seconds = duration_seconds(audio, fmt, rate)
        except BadAudio as exc:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"field `audio`: {exc}") from None
        if seconds > self.config.max_utterance_seconds:
            raise ProtocolError(
                ErrorCode.AUDIO_TOO_LARGE,
                f"utterance of {seconds:.1f}s exceeds {self.config.max_utterance_seconds:g}s",
            )
        self.limit(session, index, seconds)
        targets = await self.utterance_targets(session)
        await self.charge_key(session, index, seconds, targets)
        await self.accept(session, index, audio, fmt, rate, request_id, seconds, targets=targets)

    async def charge_key(
        self, session: Session, index: int, seconds: float, targets: list[str] | None, *, debt: bool = False
    ) -> None:
        """The session's API key pays for ``seconds`` of audio (its ``audio_seconds_per_hour``):
        ``quota_exceeded`` naming the utterance when the hour's budget is spent. With
        ``debt``, charged whatever the budget (audio already streamed). Also the key's usage:
        with ``targets`` (the utterance's, listener languages too), an utterance and a job
        per target. Renews the session's count among the key's open
        sessions now and then."""
        key_id = session.settings.key_id
        if key_id is None:
            return
        limits = self.key_limits(key_id)
        per_hour = None if debt else limits.get("audio_seconds_per_hour")
        utterances, jobs = (1, len(targets)) if targets is not None else (0, 0)
        charged = await self.store.charge_key(
            key_id, seconds, per_hour, time.time(), utterances, jobs, session_id=session.session_id
        )
        if not charged:
            self.metrics.inc("quota_refused", key=key_id)
            raise ProtocolError(
                ErrorCode.QUOTA_EXCEEDED,
                f"key {key_id!r} has used its {per_hour} seconds of audio this hour",
                f"utterance {index}",
            )
        for kind, amount in (("utterances", utterances), ("jobs", jobs), ("audio_seconds", seconds)):
            if amount:
                self.metrics.inc("key_usage", amount, key=key_id, kind=kind)
        now = self.clock()
        if now - session.key_renewed_at >= 60.0:
            session.key_renewed_at = now
            await self.store.open_key_session(key_id, session.session_id, None, KEY_SESSION_LAPSE)

    async def admit(self, session: Session, index: int) -> bool:
        """The checks of a new utterance index before its audio; False for a duplicate."""
        if not session.life.accepting:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "session is closing; no new utterances")
        if index < 0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "utterance_index must not be negative")
        self.limit(session, index, None)
        if index <= session.utterances.max_index and await self.store.lookup_request(
            session.session_id, f"u:{index}"
        ):
            log.info("utterance.duplicate", session_id=session.session_id, utterance_index=index)
            self.metrics.inc("utterances_duplicate")
            return False
        if index < session.utterances.max_index:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"utterance_index {index} is below {session.utterances.max_index}: indices must increase",
            )
        return True

    async def accept(
        self,
        session: Session,
        index: int,
        audio: bytes,
        fmt: str,
        rate: int,
        request_id: str | None,
        seconds: float,
        live: LiveUtterance | None = None,
        targets: list[str] | None = None,
    ) -> bool:
        """Record the utterance and its jobs (one per target language) in one store step and
        start them. ``live``: the utterance is still being spoken (its jobs stream).
        ``targets``: its target languages, as charged to the key (default: the session's now)."""
        st = session.settings
        if targets is None:
            targets = self.targets(session)
        now = self.clock()
        preferred = NodeId(st.preferred_node_id) if st.preferred_node_id else None
        repair = self.store.nodes().repair_available(st.src_lang)
        jobs = [
            Job(
                job_id=new_job_id(),
                trace_id=session.trace_id,
                session_id=session.session_id,
                utterance_index=index,
                src_lang=st.src_lang,
                tgt_lang=tgt,
                stages=expand_stages(st.src_lang, tgt, tts=st.tts, repair_available=repair),
                audio=audio,
                audio_format=fmt,
                sample_rate=rate,
                # a job still being spoken: its deadlines allow for the longest utterance
                audio_seconds=self.config.max_utterance_seconds if live is not None else seconds,
                created_at=now,
                request_id=request_id,
                preferred_node_id=preferred,
                # a whole utterance was spoken before it arrived; a streamed one begins now
                spoken_at=time.time() - seconds,
                speech_ended_at=time.time() if live is None else None,
            )
            for tgt in targets
        ]
        deadline = time.time() + self.config.pending_timeout
        me = self.config.instance_id
        records = [job_record(j, me, st.tts, st.partials, deadline, with_data=True) for j in jobs]
        refused = await self.store.accept_utterance(session.session_id, index, request_id, records, targets)
        if refused is not None:
            log.info(
                "utterance.duplicate",
                session_id=session.session_id,
                utterance_index=index,
                request_id=request_id,
                by=refused,
            )
            self.metrics.inc("utterances_duplicate")
            return False
        session.utterances.max_index = max(session.utterances.max_index, index)
        log.info(
            "utterance.received",
            trace_id=session.trace_id,
            session_id=session.session_id,
            utterance_index=index,
            src_lang=st.src_lang,
            tgt_langs=targets,
            audio_size_bytes=len(audio),
            audio_seconds=round(seconds, 3),
            streaming=live is not None,
        )
        self.metrics.inc("utterances_received")
        runs = []
        for job in jobs:
            self.table.job_added(session, job.job_id)
            self.metrics.inc("jobs_created")
            log.info(
                "job.created",
                **job_fields(job),
                src_lang=job.src_lang,
                tgt_lang=job.tgt_lang,
                stages=list(job.stages),
                audio_format=fmt,
                audio_size_bytes=len(audio),
            )
            first = job.tgt_lang == st.tgt_langs[0]
            run = JobRun(job, st.tts, st.partials, first_tgt=first)
            if live is not None:
                run.live = live
                run.end_of_speech_ms = st.end_of_speech_ms if first else None
                live.runs.append(run)
            runs.append(run)
        for run in runs:
            await self.runner.created(run)
        return True
