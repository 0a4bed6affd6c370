"""The bridge: this instance's side of a cluster of instances on Redis.

It has two sides. It is the :class:`~linguamesh.scheduler.cluster.remote.Remote` the
parts call (route to a node held elsewhere, hand a job over, relay a session's events
into its history), and it carries out on the parts what other instances ask of this
one through its inbox (adopt a job, write to a node, a session moved, a node changed,
a dead instance's job to take over, Redis restarted empty). The parts need the remote
when they are made, and the bridge acts on the parts: the service makes the bridge
first and hands it the parts when it starts it (:meth:`Bridge.start`), before which
no inbox is read. The inbox, liveness and the sweeper are
:class:`~linguamesh.scheduler.cluster.membership.Cluster`'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ... import protocol as p
from ...core.ids import JobId, NodeId, SessionId
from ...core.jobs import JobState
from ...core.lifecycle import Assign, Status
from ...observability.logging import get_logger
from ...state.base import DependencyDown, JobRecord, Notify
from ...state.redis import RedisStateStore
from ..config import SchedulerConfig
from ..jobs.jobrun import JobRun
from ..jobs.runner import Runner
from ..nodes.registry import Registry
from ..records import job_fields, job_from_data, job_from_record, job_record
from ..sessions.stream import LiveUtterance, UtteranceStream
from ..sessions.table import SessionTable
from ..tasks import Tasks
from .membership import Cluster
from .relay import SessionRelay

log = get_logger("linguamesh.scheduler")

#: Seconds a forwarded result waits for its owner's answer before it is checked again,
#: and how many rounds (the owner is live but silent) before giving up on it.
RESULT_WATCH = 1.0
RESULT_WATCH_TRIES = 20
#: States in which a job's attempt is with its node.
IN_FLIGHT = frozenset({JobState.ASSIGNED, JobState.DISPATCHED, JobState.ACCEPTED, JobState.RUNNING})


class Parts(NamedTuple):
    """This instance's parts, which the bridge acts on for other instances."""

    registry: Registry
    runner: Runner
    table: SessionTable
    stream: UtteranceStream
    #: what this instance answers other instances' operator queries with (kind, arg)
    answer: Callable[[str, str], dict[str, Any] | None]


class Bridge:
    shared = True

    def __init__(self, config: SchedulerConfig, store: RedisStateStore, tasks: Tasks) -> None:
        self.config = config
        self.me = config.instance_id
        self.store = store
        self.tasks = tasks
        self.cluster = Cluster(
            self, store, config.instance_id, tasks, config.dead_instance_retention, config.ack_timeout
        )
        #: events for sessions held by other instances, produced by jobs handed over to us
        self.relays: dict[SessionId, SessionRelay] = {}
        self._parts: Parts | None = None
        #: results forwarded to their job's owner, not yet answered: job id -> (node, frame,
        #: owner, round)
        self._awaiting: dict[str, tuple[NodeId, str, str, int]] = {}

    @property
    def parts(self) -> Parts:
        assert self._parts is not None, "the bridge acts on the parts once started"
        return self._parts

    async def start(self, parts: Parts) -> None:
        """Join the cluster; from now on other instances' messages act on ``parts``."""
        self._parts = parts
        await self.cluster.start()

    async def stop(self) -> None:
        # finished results go into their histories first: every relay at once, 2 s in all
        await asyncio.gather(*(relay.flushed(timeout=2.0) for relay in list(self.relays.values())))
        for relay in list(self.relays.values()):  # what could not be written by now is given up
            relay.stop()
        await self.cluster.stop()

    # ------------------------------------------------------------------ Remote

    def node_holder(self, node_id: NodeId) -> str | None:
        owner = self.store.node_owner(node_id)
        return owner if owner is not None and owner != self.me else None

    async def to_node(self, holder: str, node_id: NodeId, frame: str, job_id: str) -> bool:
        return await self.cluster.to_node(holder, node_id, frame, job_id)

    def node_changed(self, kind: str, node_id: NodeId) -> None:
        self.tasks.spawn(self.cluster.broadcast(kind, node_id), f"broadcast-{kind}")

    def handover_entry(self, job_id: JobId, data: dict[str, Any]) -> bytes:
        return self.cluster.adopt_entry(job_id, data)

    async def hand_over(self, holder: str, job_id: JobId, data: dict[str, Any]) -> bool:
        # the holder owns the job from here on, in its record too: its end removes the job
        # from the active set, and no sweeper takes it back to run it again
        try:
            await self.store.claim_job(job_id, holder, set())
        except DependencyDown:
            return False
        return await self.cluster.adopt(holder, job_id, data)

    def relay(self, session_id: SessionId) -> SessionRelay:
        relay = self.relays.get(session_id)
        if relay is None:
            relay = SessionRelay(
                session_id, self.store, self._relayed, self._relay_idle, self.tasks, self._relay_notice
            )
            self.relays[session_id] = relay
        return relay

    async def forward(self, node_id: NodeId, job_id: str, frame: str, claim: bool) -> bool:
        owner = await self.cluster.owner_of(job_id)
        if owner is None or owner == self.me:
            return False
        if await self.cluster.is_live(owner):
            await self.cluster.node_msg(owner, node_id, job_id, frame)
            if claim:  # a result: watched until its owner answers the node (it may have died)
                self._watch(job_id, node_id, frame, owner, 0)
            return True
        if claim:
            await self.cluster.claim(job_id)  # a dead owner's job: carried on here if claimed
        return False

    async def recover(self, job_id: str) -> bool:
        try:
            rec = await self.store.load_job(JobId(job_id))
        except DependencyDown:
            return False
        if rec is None or rec.owner != self.me or rec.state == "ended" or not rec.data:
            return False
        log.warning(
            "job.recovered",
            job_id=job_id,
            state=rec.state,
            reason="result for a job of this instance's previous run",
        )
        await self.adopt_job(rec, expired=False)
        return JobId(job_id) in self.parts.runner.runs

    def _watch(self, job_id: str, node_id: NodeId, frame: str, owner: str, tries: int) -> None:
        """A node's result went to the job's owner: if the owner says nothing to the node
        about the job within RESULT_WATCH (an ack), it is asked again — or, once it is no
        longer live, the job is claimed here and the result used (nothing is redone)."""
        self._awaiting[job_id] = (node_id, frame, owner, tries)
        self.tasks.call_later(
            RESULT_WATCH, lambda: self.tasks.spawn(self._recheck(job_id, tries), "result-watch")
        )

    async def _recheck(self, job_id: str, tries: int) -> None:
        entry = self._awaiting.get(job_id)
        if entry is None or entry[3] != tries:  # answered, or a newer watch runs
            return
        del self._awaiting[job_id]
        node_id, frame, owner, _ = entry
        if tries >= RESULT_WATCH_TRIES:
            log.warning("job_result.owner_silent", job_id=job_id, node_id=node_id, owner=owner)
            return
        self.cluster.job_owner.pop(job_id, None)  # ask the store who owns it now
        try:
            now = await self.cluster.owner_of(job_id)
            if now is not None and now != self.me and await self.cluster.is_live(now):
                await self.cluster.node_msg(now, node_id, job_id, frame)  # ask again
                self._watch(job_id, node_id, frame, now, tries + 1)
                return
            if now is not None and now != self.me:
                await self.cluster.claim(job_id)  # the owner is gone: one claim wins
        except DependencyDown:
            self._watch(job_id, node_id, frame, owner, tries + 1)
            return
        if JobId(job_id) in self.parts.runner.runs:  # it runs here now: the result is used
            msg = p.decode_node(frame)
            if isinstance(msg, p.JobResult):
                log.warning("job_result.recovered", job_id=job_id, node_id=node_id, dead_owner=owner)
                await self.parts.runner.node_message(node_id, msg, frame, routed=True)

    async def session_claimed(self, session_id: SessionId, prev_owner: str | None) -> None:
        if prev_owner is not None and prev_owner != self.me and await self.cluster.is_live(prev_owner):
            await self.cluster.session_moved(prev_owner, session_id)

    # relays ----------------------------------------------------------------------

    def _relay_idle(self, relay: SessionRelay) -> None:
        if self.relays.get(relay.session_id) is relay:
            del self.relays[relay.session_id]

    async def _remote_holder(self, session_id: SessionId) -> str | None:
        """The live instance other than this one that holds the session, if any."""
        if session_id in self.parts.table.sessions:
            return None
        owner = await self.cluster.session_holder(session_id)
        if owner is None or owner == self.me or not await self.cluster.is_live(owner):
            return None
        return owner

    async def _relay_notice(self, session_id: SessionId) -> Notify | None:
        """Where a relay's store step should announce the events: the session's holder,
        when that is another live instance (else the relay delivers or notifies itself)."""
        owner = await self._remote_holder(session_id)
        if owner is None:
            return None
        return Notify(owner, self.cluster.next_message_id(), self.me)

    async def _relayed(self, session_id: SessionId, events: list[tuple[int, bytes]]) -> None:
        """A relay put events into a session's history and the store did not announce
        them: deliver them here, or tell whoever holds the session now."""
        session = self.parts.table.sessions.get(session_id)
        if session is not None:  # it moved here meanwhile
            session.delivery.deliver(events, events[-1][0])
            return
        owner = await self._remote_holder(session_id)
        if owner is not None:
            self.cluster.notify_session(owner, session_id, events)

    # ------------------------------------------------------------------ what other instances ask

    async def adopt_handed_over(self, job_id: str, data: dict[str, Any], sender: str = "") -> None:
        """Another instance handed us a job for a node we hold: dispatch and run it here. A
        live job (its utterance still spoken) streams to the node, and its holder relays
        the rest of the audio here as it comes (``relayed_audio``)."""
        runner = self.parts.runner
        if self.knows(job_id):
            return  # a copy of the hand-over: the job runs, or ran, here
        job, tts, partials = job_from_data(
            job_id, data, JobState.ASSIGNED.value, int(data["attempt_id"]), data["node_id"], runner.clock()
        )
        run = JobRun(job, tts, partials, first_tgt=bool(data.get("first_tgt", True)), first_selection=False)
        tp = data.get("traceparent")
        run.traceparent = tp if isinstance(tp, str) else None
        live = data.get("live")
        if isinstance(live, dict) and sender:
            run.live = LiveUtterance(-1, job.utterance_index, bytearray(job.audio), int(live["pieces"]))
            run.live.relayed_from = sender
            run.live.runs.append(run)
            eos = live.get("end_of_speech_ms")
            run.end_of_speech_ms = int(eos) if eos is not None else None
        log.info("job.adopted", **job_fields(job), reason="handed over", streaming=run.live is not None)
        node_id = NodeId(data["node_id"])
        await runner.start(
            run, lambda j: [Assign(j.job_id, node_id, j.attempt_id), Status(j.job_id, "assigned", node_id)]
        )

    def answer(self, kind: str, arg: str) -> dict[str, Any] | None:
        return self.parts.answer(kind, arg)

    async def ask(self, instance: str, kind: str, arg: str = "") -> dict[str, Any] | None:
        return await self.cluster.ask(instance, kind, arg)

    async def ask_all(self, kind: str, arg: str = "") -> dict[str, dict[str, Any]]:
        """Every other live instance's answer (those that answer in time)."""
        others = sorted(self.cluster.live - {self.me})
        answers = await asyncio.gather(*(self.cluster.ask(i, kind, arg) for i in others))
        return {i: a for i, a in zip(others, answers, strict=True) if a is not None}

    async def relayed_audio(self, job_id: str, offset: int, audio: bytes, size: int | None) -> None:
        run = self.parts.runner.runs.get(JobId(job_id))
        if run is not None:
            await self.parts.stream.relay_audio(run, offset, audio, size)

    async def relayed_speech_end(self, session_id: str, job_id: str, size: int, reason: str) -> None:
        await self.parts.stream.relayed_speech_end(session_id, job_id, size, reason)

    def stream_audio(
        self, holder: str, job_id: str, offset: int, audio: bytes, size: int | None = None
    ) -> None:
        self.cluster.stream_audio(holder, job_id, offset, audio, size)

    def speech_ended(self, holder: str, session_id: str, job_id: str, size: int, reason: str) -> None:
        self.cluster.speech_ended(holder, session_id, job_id, size, reason)

    async def write_local_node(self, node_id: NodeId, frame: str, from_instance: str, job_id: str) -> None:
        if job_id:  # the job's owner speaks to the node about it: it is alive and has the result
            self._awaiting.pop(job_id, None)
        await self.parts.registry.write_local(node_id, frame, from_instance, job_id)

    async def routed_node_message(self, node_id: NodeId, frame: str) -> None:
        """A node message that arrived at another instance, for a job owned here."""
        msg = p.decode_node(frame)
        if isinstance(msg, (p.NodeHeartbeat, p.NodeRegister)):
            return
        await self.parts.runner.node_message(node_id, msg, frame, routed=True)

    async def session_moved_away(self, session_id: SessionId, new_owner: str) -> None:
        """Tell the new holder how far the history goes once the table let the session go."""
        last = await self.parts.table.moved_away(session_id, new_owner)
        if last is not None:
            self.cluster.notify_session(new_owner, session_id, [], up_to=last)

    def deliver(self, session_id: SessionId, events: list[tuple[int, bytes]], seq: int) -> None:
        session = self.parts.table.sessions.get(session_id)
        if session is not None:
            session.delivery.deliver(events, seq)

    def hold(self, session_id: SessionId, held: list[tuple[str, int, bytes]]) -> None:
        session = self.parts.table.sessions.get(session_id)
        if session is not None:
            for tgt, index, payload in held:
                session.delivery.hold(tgt, index, payload)

    async def capacity_changed(self) -> None:
        await self.parts.runner.retry_waiting()

    async def redis_recovered(self) -> None:
        await self.capacity_changed()

    async def remote_node_gone(self, node_id: NodeId) -> None:
        await self.parts.runner.node_lost(node_id)

    def knows(self, job_id: str) -> bool:
        runner = self.parts.runner
        return JobId(job_id) in runner.runs or JobId(job_id) in runner.finished

    async def adopt_job(self, rec: JobRecord, *, expired: bool) -> None:
        """Take over a job of a dead instance and carry on with it here."""
        runner, table = self.parts.runner, self.parts.table
        if JobId(rec.job_id) in runner.runs or not rec.data:
            return
        job, tts, partials = job_from_record(rec, runner.clock())
        session = table.sessions.get(job.session_id)
        first = True if session is None else job.tgt_lang == session.settings.tgt_langs[0]
        if session is not None:
            table.job_added(session, job.job_id)
        node = NodeId(job.node_id) if job.node_id else None
        view = self.store.nodes().get(node) if node is not None else None
        reoffer = expired and job.state in IN_FLIGHT and view is not None and view.online
        log.warning("job.adopted", **job_fields(job), state=job.state.value, expired=expired, reoffer=reoffer)
        run = JobRun(job, tts, partials, first_tgt=first)
        run.traceparent = rec.traceparent  # the dead instance's trace goes on here
        if reoffer and node is not None:
            # its node is still here: offer it the same attempt again; a node still running it
            # acks, one that finished sends its kept result — the work is not done twice
            job.state = JobState.ASSIGNED
            await runner.start(run, lambda j: [Assign(j.job_id, node, j.attempt_id)])
            return
        await runner.start(run, runner.resume_step(job.state) if expired else None)

    async def restore_shared_state(self) -> None:
        """Redis came back empty: write back what this instance holds (its nodes, its jobs'
        records, its sessions with their event numbering and ordering state)."""
        registry, runner, table = self.parts.registry, self.parts.runner, self.parts.table
        store = self.store
        for nc in list(registry.nodes.values()):
            view = store.nodes().get(nc.node_id)
            if view is not None:
                await store.register_node(view, self.me)
        for run in list(runner.runs.values()):
            job = run.job
            await store.save_job(
                job_record(job, self.me, run.tts, run.partials, time.time() + 30, with_data=True)
            )
            await store.expect_result(job.session_id, job.tgt_lang, job.utterance_index)
        # after the jobs: a held result behind a job running here waits for it again
        for session in list(table.sessions.values()):
            await table.restore(session)
        log.warning(
            "cluster.state_restored",
            nodes=len(registry.nodes),
            sessions=len(table.sessions),
            jobs=len(runner.runs),
        )
        await self.parts.runner.retry_waiting()  # jobs that waited for a node Redis had forgotten
