"""Many scheduler instances on one Redis (``docs/cluster.md``): liveness, inboxes, takeover.

Each instance owns the sockets it holds: its nodes and its sessions. A job is
owned by the instance that created it (the session's owner at the time) until
another instance takes it over. When an instance must reach a socket it does
not hold, it appends a message to the owner's inbox (a Redis Stream read with
a consumer group and acked after handling): delivery between instances is
at-least-once, and each message carries an id that the receiver remembers, so
a redelivered message is dropped at the edge.

An inbox entry is a MessagePack array of messages (``protocol/inbox.py``): what
one instance queued for another within one turn of its event loop goes out in one
entry (one XADD). Two kinds are also written by the store's Lua scripts, in the
same step as the change they report: ``adopt`` by the reservation (the entry built
here by :meth:`Cluster.adopt_entry`) and ``session`` by the history appends.

What arrives is handed to the bridge (``bridge.py``); this module knows nothing else
of the scheduler.

Background loops: instance heartbeat (a key with a TTL), the live-instance
set, node registry sync into the local mirror, the inbox reader, and the
sweeper that claims jobs past their deadline whose owner is dead.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

from ...core.ids import JobId, NodeId, SessionId
from ...observability.logging import get_logger
from ...protocol import inbox as ib
from ...state.base import DependencyDown
from ...state.redis import RedisStateStore
from ..tasks import Tasks, stop_if_cancelled

if TYPE_CHECKING:
    from .bridge import Bridge

log = get_logger("linguamesh.scheduler.cluster")

INSTANCE_TTL = 3.0
#: The instance heartbeat; also how often the node mirror is re-read, so an instance
#: sees a node registered on another one within HEARTBEAT (plus one read) at worst —
#: usually at once, from the registering instance's notice.
HEARTBEAT = 0.5
SEEN_IDS = 20_000
#: Active jobs one claim of a dead owner's waiting jobs looks through (in deadline order);
#: any beyond are taken at their deadline as before.
UNPLACED_SCAN = 10_000
#: An instance silent this long (seconds) is forgotten, its inbox deleted; checked this often.
PRUNE_AFTER = 3600.0
PRUNE_EVERY = 30.0


class InstanceIdTaken(Exception):
    """Another live process holds this instance id: two instances must never share one
    (one inbox, one owner identity for sessions and jobs)."""


class Cluster:
    def __init__(
        self,
        handler: Bridge,
        store: RedisStateStore,
        instance_id: str,
        tasks: Tasks,
        prune_after: float = PRUNE_AFTER,
        orphan_grace: float = 5.0,
    ) -> None:
        self.handler = handler
        self.prune_after = prune_after
        #: after an instance died, how long its jobs at a node wait for that node to come
        #: back with them (through another instance) before they are taken over
        self.orphan_grace = orphan_grace
        self._orphans_at: float | None = None
        #: deaths seen before this (monotonic) time are not believed yet (see ``_heartbeat``)
        self._believe_deaths_at = float("-inf")
        self.store = store
        self.tasks = tasks
        self.me = instance_id
        self.live: set[str] = {self.me}
        #: the next sweep also takes the waiting jobs of dead owners (see ``_sweeper``)
        self._claim_unplaced = True
        self.job_owner: OrderedDict[str, str] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: list[asyncio.Task[Any]] = []
        self.healthy = True
        self.run_id: str | None = None
        self._holders: dict[str, tuple[str, float]] = {}
        self._live_read_at = float("-inf")
        # message ids: unique per process start, cheap to make
        self._boot = f"{self.me}.{uuid.uuid4().hex[:12]}"
        self._sent = 0
        self._unacked: list[bytes] = []
        self._outbox: dict[str, tuple[list[ib.InboxMessage], list[asyncio.Future[bool]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        #: queries sent to other instances, waiting for their answer
        self._asked: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def _claim_id(self) -> None:
        """Hold the instance id, or refuse to start: a previous run of ours that was killed
        holds it at most INSTANCE_TTL more; a live instance keeps refreshing it."""
        end = time.monotonic() + 2 * INSTANCE_TTL
        holder = await self.store.claim_instance(self.me, self._boot, INSTANCE_TTL)
        if holder is not None:
            log.info("cluster.instance_id_held", instance_id=self.me, waiting_s=2 * INSTANCE_TTL)
        while holder is not None:
            if time.monotonic() > end:
                raise InstanceIdTaken(
                    f"instance id {self.me!r} is held by another live scheduler instance; give this one "
                    "another --instance-id (or leave it unset for a unique one), or stop the other"
                )
            await asyncio.sleep(0.25)
            holder = await self.store.claim_instance(self.me, self._boot, INSTANCE_TTL)

    async def start(self) -> None:
        try:
            await self._claim_id()
            await self.store.instance_alive(self.me, INSTANCE_TTL, self._boot)
            self.live = await self.store.live_instances() | {self.me}
            await self.store.sync_nodes(self.live)
            self.run_id = await self.store.server_run_id()
        except DependencyDown as exc:
            self.healthy = False
            log.error("cluster.start_degraded", error=str(exc))
        for coro, name in (
            (self._heartbeat(), "cluster-heartbeat"),
            (self._inbox(), "cluster-inbox"),
            (self._sweeper(), "cluster-sweeper"),
        ):
            self._tasks.append(self.tasks.spawn(coro, name))
        log.info("cluster.joined", instance_id=self.me, live=sorted(self.live))

    async def stop(self) -> None:
        if self._sending:  # messages already handed to us go out before we leave
            await asyncio.wait(list(self._sending), timeout=2.0)
        for t in self._tasks:
            t.cancel()
        if self._tasks:  # bounded: a stop must end even if a task does not
            _, left = await asyncio.wait(self._tasks, timeout=2.0)
            if left:
                log.warning("cluster.tasks_left_running", tasks=sorted(t.get_name() for t in left))
        try:
            if self._unacked:  # handled, not yet acked: a restart under this id must not see them again
                await self.store.ack_inbox(self.me, self._unacked)
            await self.store.release_instance(self.me, self._boot)  # a restart may take the id at once
        except DependencyDown:
            pass

    # ------------------------------------------------------------------ sending

    def next_message_id(self) -> str:
        self._sent += 1
        return f"{self._boot}.{self._sent}"

    async def _send(self, instance: str, msg: ib.InboxMessage) -> bool:
        """Send ``msg`` to ``instance``'s inbox; True when it was written."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._post(instance, msg, done)
        return await done

    def _post(self, instance: str, msg: ib.InboxMessage, done: asyncio.Future[bool] | None = None) -> None:
        """Queue ``msg`` for ``instance``: every message queued for it in this turn of the
        event loop goes out as one inbox entry (one XADD). ``done`` learns whether it did."""
        msg.id = msg.id or self.next_message_id()
        msg.sender = msg.sender or self.me
        box = self._outbox.get(instance)
        if box is None:
            box = self._outbox[instance] = ([], [])
            asyncio.get_running_loop().call_soon(self._flush, instance)
        box[0].append(msg)
        if done is not None:
            box[1].append(done)

    def _flush(self, instance: str) -> None:
        messages, waiters = self._outbox.pop(instance)

        async def send() -> None:
            try:
                await self.store.send_to_instance(instance, ib.encode_entry(messages))
                ok = True
            except DependencyDown as exc:
                kinds = sorted({type(m).__name__ for m in messages})
                log.warning("send.routed_failed", to_instance=instance, kinds=kinds, error=str(exc))
                ok = False
            for w in waiters:
                if not w.done():
                    w.set_result(ok)

        # a fresh context (Tasks): not the log context of whichever job queued the first message
        task = self.tasks.spawn(send(), f"cluster-send-{instance}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def to_node(self, owner: str, node_id: str, frame: str, job_id: str = "") -> bool:
        log.debug("send.routed", to_instance=owner, node_id=node_id, job_id=job_id or None)
        return await self._send(owner, ib.ToNode(node_id=node_id, frame=frame, job_id=job_id))

    async def node_msg(self, owner: str, node_id: str, job_id: str, frame: str) -> bool:
        log.debug("send.routed", to_instance=owner, node_id=node_id, job_id=job_id, kind="node_msg")
        return await self._send(owner, ib.NodeFrame(node_id=node_id, job_id=job_id, frame=frame))

    def notify_session(
        self, owner: str, session_id: str, events: list[tuple[int, bytes]], up_to: int | None = None
    ) -> None:
        """Tell the session's holder about new events, carrying them (no extra read needed);
        with only ``up_to``, the holder reads them from the history."""
        last = events[-1][0] if events else (up_to or 0)
        carried = [(seq, data.decode()) for seq, data in events]
        self._post(owner, ib.SessionEvents(session_id=session_id, seq=last, events=carried))

    async def ask(
        self, instance: str, kind: str, arg: str = "", timeout: float = 2.0
    ) -> dict[str, Any] | None:
        """Ask ``instance`` what only it knows (its answer comes to our inbox); None when it
        does not know, or does not answer within ``timeout``."""
        msg = ib.Query(kind=kind, arg=arg)
        msg.id = self.next_message_id()
        answer: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._asked[msg.id] = answer
        try:
            self._post(instance, msg)
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            log.info("cluster.query_unanswered", to_instance=instance, kind=kind)
            return None
        finally:
            self._asked.pop(msg.id, None)

    def stream_audio(self, holder: str, job_id: str, offset: int, audio: bytes, size: int | None) -> None:
        self._post(holder, ib.StreamAudio(job_id=job_id, offset=offset, audio=audio, size=size))

    def speech_ended(self, holder: str, session_id: str, job_id: str, size: int, reason: str) -> None:
        self._post(holder, ib.SpeechEnd(session_id=session_id, job_id=job_id, size=size, reason=reason))

    async def adopt(self, holder: str, job_id: str, data: dict[str, Any]) -> bool:
        return await self._send(holder, ib.Adopt(job_id=job_id, data=data))

    def adopt_entry(self, job_id: str, data: dict[str, Any]) -> bytes:
        """An inbox entry handing a job over, for the reservation to write (see Handover)."""
        msg = ib.Adopt(id=self.next_message_id(), sender=self.me, job_id=job_id, data=data)
        return ib.encode_entry([msg])

    def cached_holder(self, session_id: str) -> str | None:
        """The instance holding a session, if it was looked up in the last 2 s."""
        hit = self._holders.get(session_id)
        if hit is not None and hit[1] > time.monotonic() and hit[0] in self.live:
            return hit[0]
        return None

    async def session_holder(self, session_id: str) -> str | None:
        """The instance holding a session (cached briefly; a move is announced anyway)."""
        hit = self.cached_holder(session_id)
        if hit is not None:
            return hit
        now = time.monotonic()
        owner = await self.store.session_owner(SessionId(session_id))
        if owner is not None:
            self._holders[session_id] = (owner, now + 2.0)
            while len(self._holders) > 50_000:
                self._holders.pop(next(iter(self._holders)))
        return owner

    async def is_live(self, instance: str) -> bool:
        """Is ``instance`` live? The live set is re-read when it does not name the instance
        (an instance that joined since the last heartbeat here is live already)."""
        if instance in self.live:
            return True
        now = time.monotonic()
        if now - self._live_read_at >= 0.2:  # a dead instance does not cost a read per event
            self._live_read_at = now
            try:
                self.live = await self.store.live_instances() | {self.me}
            except DependencyDown:
                return False
        return instance in self.live

    async def session_moved(self, old_owner: str, session_id: str) -> None:
        await self._send(old_owner, ib.Moved(session_id=session_id))

    async def broadcast(self, kind: str, node_id: str) -> None:
        """Tell every other live instance that a node registered (``node``) or left (``gone``)."""
        for inst in self.live - {self.me}:
            msg: ib.InboxMessage = (
                ib.NodeChanged(node_id=node_id) if kind == "node" else ib.NodeGone(node_id=node_id)
            )
            await self._send(inst, msg)

    def remember_owner(self, job_id: str, owner: str) -> None:
        self.job_owner[job_id] = owner
        self.job_owner.move_to_end(job_id)
        while len(self.job_owner) > 50_000:
            self.job_owner.popitem(last=False)

    async def owner_of(self, job_id: str) -> str | None:
        owner = self.job_owner.get(job_id)
        if owner is not None and owner in self.live:
            return owner
        owner = await self.store.job_owner(job_id)
        if owner is not None:
            self.remember_owner(job_id, owner)
        return owner

    # ------------------------------------------------------------------ loops

    async def _heartbeat(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                run_id = await self.store.server_run_id()
                restarted = self.run_id is not None and run_id != self.run_id
                await self.store.instance_alive(self.me, INSTANCE_TTL, self._boot)
                before = self.live
                live = await self.store.live_instances() | {self.me}
                if not self.healthy or restarted:
                    # Redis was away (or lost its data): every instance's liveness may have lapsed
                    # meanwhile, alive or not; a death is believed once they had a heartbeat's time
                    # since Redis came back to say they are there
                    self._believe_deaths_at = time.monotonic() + INSTANCE_TTL
                if time.monotonic() < self._believe_deaths_at:
                    live |= before
                self.live = live
                if before - self.live:  # an instance died: its waiting jobs are taken at once,
                    self._claim_unplaced = True  # the rest once their nodes had time to come back
                    self._orphans_at = time.monotonic() + self.orphan_grace
                if restarted:
                    log.warning("cluster.redis_restarted", instance_id=self.me)
                    await self.handler.restore_shared_state()
                # only now: a restore cut short by a new failure is tried again next time
                self.run_id = run_id
                recovered = not self.healthy
                # every tick: a node registered on another instance is seen here within one
                # heartbeat (0.5 s) even if its instance's notice was lost
                gained = await self.store.sync_nodes(self.live)
                if recovered:
                    log.info("cluster.redis_back", instance_id=self.me)
                    self.healthy = True
                    await self.handler.redis_recovered()
                elif gained:  # a node appeared or freed slots: jobs waiting here try again
                    await self.handler.capacity_changed()
            except DependencyDown as exc:
                if self.healthy:
                    log.error("cluster.redis_down", instance_id=self.me, error=str(exc))
                self.healthy = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the heartbeat must outlive any one failure
                # (a Redis still loading its data answers with errors of its own); tried again next tick
                log.error("cluster.heartbeat_failed", instance_id=self.me, error=repr(exc))
                self.healthy = False
            await asyncio.sleep(HEARTBEAT)

    async def _inbox(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                # the previous batch is acked in the same request that reads the next one
                batch = await self.store.read_inbox(self.me, block_ms=500, ack=self._unacked)
                self._unacked = []
            except DependencyDown:
                await asyncio.sleep(0.5)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep reading whatever one bad message did
                log.error("cluster.inbox_failed", error=repr(exc))
                await asyncio.sleep(0.2)
                continue
            ids = []
            for entry_id, raw in batch:
                ids.append(entry_id)
                try:
                    messages = ib.decode_entry(raw)
                except msgspec.DecodeError:
                    log.warning("cluster.bad_message", raw=raw[:200])
                    continue
                for msg in messages:
                    if self._fresh(msg):
                        if isinstance(msg, ib.SessionEvents):  # the most frequent kind: no await needed
                            self._deliver(msg)
                        else:
                            await self._receive(msg)
            self._unacked = ids

    def _fresh(self, msg: ib.InboxMessage) -> bool:
        """False for a message already handled (at-least-once delivery: de-duplicated here)."""
        seen = self._seen
        if msg.id in seen:
            log.debug("cluster.duplicate_message", kind=type(msg).__name__, message_id=msg.id)
            return False
        seen[msg.id] = None
        if len(seen) > SEEN_IDS:
            seen.popitem(last=False)
        return True

    def _deliver(self, msg: ib.SessionEvents) -> None:
        sid = SessionId(msg.session_id)
        if msg.held:
            self.handler.hold(sid, [(tgt, index, data.encode()) for tgt, index, data in msg.held])
        if msg.events or not msg.held:  # (no events and no copies: read the history)
            self.handler.deliver(sid, [(seq, data.encode()) for seq, data in msg.events], msg.seq)

    async def _receive(self, msg: ib.InboxMessage) -> None:
        try:
            await self._handle(msg)
        except DependencyDown:
            pass  # the sender's timeouts cover it (the ack timeout, the sweeper's claims)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the inbox reader
            log.error("cluster.handle_failed", kind=type(msg).__name__, error=repr(exc))

    async def _handle(self, msg: ib.InboxMessage) -> None:
        h = self.handler
        if isinstance(msg, ib.Adopt):
            await h.adopt_handed_over(msg.job_id, msg.data, msg.sender)
        elif isinstance(msg, ib.Query):
            self._post(msg.sender, ib.Answer(reply_to=msg.id, data=h.answer(msg.kind, msg.arg)))
        elif isinstance(msg, ib.Answer):
            waiting = self._asked.get(msg.reply_to)
            if waiting is not None and not waiting.done():
                waiting.set_result(msg.data)
        elif isinstance(msg, ib.StreamAudio):
            await h.relayed_audio(msg.job_id, msg.offset, msg.audio, msg.size)
        elif isinstance(msg, ib.SpeechEnd):
            await h.relayed_speech_end(msg.session_id, msg.job_id, msg.size, msg.reason)
        elif isinstance(msg, ib.ToNode):
            if msg.job_id:
                self.remember_owner(msg.job_id, msg.sender)
            await h.write_local_node(
                NodeId(msg.node_id), msg.frame, from_instance=msg.sender, job_id=msg.job_id
            )
        elif isinstance(msg, ib.NodeFrame):
            await h.routed_node_message(NodeId(msg.node_id), msg.frame)
        elif isinstance(msg, ib.Moved):
            await h.session_moved_away(SessionId(msg.session_id), new_owner=msg.sender)
        elif isinstance(msg, ib.NodeChanged):
            await self.store.refresh_node(NodeId(msg.node_id), self.live)
            await h.capacity_changed()  # always: the notice may say what a sync already saw
        elif isinstance(msg, ib.NodeGone):
            await self.store.refresh_node(NodeId(msg.node_id), self.live)
            await h.remote_node_gone(NodeId(msg.node_id))
        elif isinstance(msg, ib.SessionEvents):
            self._deliver(msg)

    async def _sweeper(self) -> None:
        pruned_at = time.monotonic()
        while True:
            stop_if_cancelled()
            await asyncio.sleep(0.5)
            if not self.healthy:
                continue
            if time.monotonic() - pruned_at >= min(PRUNE_EVERY, self.prune_after):
                pruned_at = time.monotonic()
                try:
                    gone = await self.store.prune_instances(self.prune_after)
                except DependencyDown:
                    gone = []
                if gone:
                    log.info("cluster.instances_pruned", instance_ids=gone, silent_s=self.prune_after)
            # after a start and after an instance died: jobs that no node has (waiting for
            # one) are taken over at once, not at their deadline (pending timeout): their owner
            # is gone, and with it everything that would have placed them
            unplaced, self._claim_unplaced = self._claim_unplaced, False
            orphaned = self._orphans_at is not None and time.monotonic() >= self._orphans_at
            if orphaned:
                self._orphans_at = None
            try:
                # this instance counts as dead too, for jobs it does not run: those of its previous
                # run under the same id (killed and restarted before they ended) are taken over
                claimed = await self.store.claim_expired_jobs(
                    self.me, time.time(), self.live - {self.me},
                    UNPLACED_SCAN if unplaced or orphaned else 100, unplaced=unplaced, orphaned=orphaned,
                )  # fmt: skip
            except DependencyDown:
                self._claim_unplaced = self._claim_unplaced or unplaced
                if orphaned:
                    self._orphans_at = time.monotonic()
                continue
            for rec in claimed:
                if self.handler.knows(rec.job_id):
                    continue  # running here (its own timers cover it), or it ended here
                log.warning("job.taken_over", job_id=rec.job_id, from_instance="dead", state=rec.state)
                await self.handler.adopt_job(rec, expired=True)

    async def claim(self, job_id: str) -> bool:
        """Take over one job whose owner is dead (its result arrived here)."""
        ok = await self.store.claim_job(job_id, self.me, self.live)
        if ok:
            rec = await self.store.load_job(JobId(job_id))
            if rec is not None:
                log.warning("job.taken_over", job_id=job_id, reason="result arrived for a dead owner's job")
                await self.handler.adopt_job(rec, expired=False)
        return ok
