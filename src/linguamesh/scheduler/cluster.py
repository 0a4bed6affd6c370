"""Many scheduler instances on one Redis (DESIGN §5): liveness, inboxes, takeover.

Each instance owns the sockets it holds: its nodes and its sessions. A job is
owned by the instance that created it (the session's owner at the time) until
another instance takes it over. When an instance must reach a socket it does
not hold, it appends a message to the owner's inbox (a Redis Stream read with
a consumer group and acked after handling): delivery between instances is
at-least-once, and each message carries an id that the receiver remembers, so
a redelivered message is dropped at the edge.

An inbox entry is a MessagePack array of messages: what one instance queued for another
within one turn of its event loop goes out in one entry (one XADD). Two kinds are
also written by the store's Lua scripts, in the same step as the change they report
(see ``state/redis.py``): ``adopt`` by the reservation (the entry built here by
:meth:`Cluster.adopt_entry`) and ``session`` by the history appends (cmsgpack).

Messages (msgspec structs, field ``k``):

* ``adopt`` — run job ``j`` (``d``: the job, audio as bytes): it was handed over
  because its node is held here;
* ``to_node`` — write this frame to node ``n``; ``o`` is the job owner, remembered so
  the node's answers go straight back to it;
* ``node_msg`` — a frame node ``n`` sent about a job this instance owns;
* ``session`` — session ``s`` has events up to ``q`` in its history (another instance
  appended them; ``e`` carries them, as text): write them to the client socket;
* ``moved`` — session ``s`` is now held by another instance: forget it here;
* ``node`` — node ``n`` registered or changed; ``gone`` — node ``n`` disconnected.

Background loops: instance heartbeat (a key with a TTL), the live-instance
set, node registry sync into the local mirror, the inbox reader, and the
sweeper that claims jobs past their deadline whose owner is dead.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

from ..core.ids import JobId, NodeId, SessionId
from ..observability.logging import get_logger
from ..state.base import DependencyDown
from ..state.redis import RedisStateStore

if TYPE_CHECKING:
    from .service import Scheduler

log = get_logger("linguamesh.scheduler.cluster")

INSTANCE_TTL = 3.0
SEEN_IDS = 20_000


class Message(msgspec.Struct, omit_defaults=True):
    k: str
    i: str = ""  # message id, for de-duplication at the edge
    n: str = ""  # node id
    s: str = ""  # session id
    j: str = ""  # job id
    o: str = ""  # owner / sender instance
    q: int = 0  # seq
    f: str = ""  # a protocol frame
    e: list[tuple[int, str]] = []  # session events (seq, event JSON) carried along
    d: dict[str, Any] = {}  # a handed-over job


# MessagePack: audio travels as bytes, events as their JSON text (no base64, no escaping)
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[Message])


class Cluster:
    def __init__(self, sched: Scheduler, store: RedisStateStore) -> None:
        self.sched = sched
        self.store = store
        self.me = sched.config.instance_id
        self.live: set[str] = {self.me}
        self.job_owner: OrderedDict[str, str] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: list[asyncio.Task[Any]] = []
        self.healthy = True
        self.run_id: str | None = None
        self._holders: dict[str, tuple[str, float]] = {}
        # message ids: unique per process start, cheap to make
        self._boot = f"{self.me}.{uuid.uuid4().hex[:12]}"
        self._sent = 0
        self._unacked: list[bytes] = []
        self._outbox: dict[str, tuple[list[Message], list[asyncio.Future[bool]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self.store.instance_alive(self.me, INSTANCE_TTL)
            self.live = await self.store.live_instances() | {self.me}
            await self.store.sync_nodes(self.live)
            self.run_id = await self.store.server_run_id()
        except DependencyDown as exc:
            self.healthy = False
            log.error("cluster.start_degraded", error=str(exc))
        loop = asyncio.get_running_loop()
        for coro, name in (
            (self._heartbeat(), "cluster-heartbeat"),
            (self._inbox(), "cluster-inbox"),
            (self._sweeper(), "cluster-sweeper"),
        ):
            self._tasks.append(loop.create_task(coro, name=name))
        log.info("cluster.joined", instance_id=self.me, live=sorted(self.live))

    async def stop(self) -> None:
        if self._sending:  # messages already handed to us go out before we leave
            await asyncio.wait(list(self._sending), timeout=2.0)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._unacked:  # handled, not yet acked: a restart under this id must not see them again
            try:
                await self.store.ack_inbox(self.me, self._unacked)
            except DependencyDown:
                pass

    # ------------------------------------------------------------------ sending

    def next_message_id(self) -> str:
        self._sent += 1
        return f"{self._boot}.{self._sent}"

    async def _send(self, instance: str, msg: Message) -> bool:
        """Send ``msg`` to ``instance``'s inbox; True when it was written."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._post(instance, msg, done)
        return await done

    def _post(self, instance: str, msg: Message, done: asyncio.Future[bool] | None = None) -> None:
        """Queue ``msg`` for ``instance``: every message queued for it in this turn of the
        event loop goes out as one inbox entry (one XADD). ``done`` learns whether it did."""
        msg.i = msg.i or self.next_message_id()
        msg.o = msg.o or self.me
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
                await self.store.send_to_instance(instance, _enc.encode(messages))
                ok = True
            except DependencyDown as exc:
                kinds = sorted({m.k for m in messages})
                log.warning("send.routed_failed", to_instance=instance, kinds=kinds, error=str(exc))
                ok = False
            for w in waiters:
                if not w.done():
                    w.set_result(ok)

        # a fresh context: not the log context of whichever job queued the first message
        task = asyncio.get_running_loop().create_task(
            send(), name=f"cluster-send-{instance}", context=contextvars.Context()
        )
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def to_node(self, owner: str, node_id: str, frame: str, job_id: str = "") -> bool:
        log.debug("send.routed", to_instance=owner, node_id=node_id, job_id=job_id or None)
        return await self._send(owner, Message(k="to_node", n=node_id, f=frame, j=job_id))

    async def node_msg(self, owner: str, node_id: str, job_id: str, frame: str) -> bool:
        log.debug("send.routed", to_instance=owner, node_id=node_id, job_id=job_id, kind="node_msg")
        return await self._send(owner, Message(k="node_msg", n=node_id, j=job_id, f=frame))

    def notify_session(
        self, owner: str, session_id: str, events: list[tuple[int, bytes]], up_to: int | None = None
    ) -> None:
        """Tell the session's holder about new events, carrying them (no extra read needed);
        with only ``up_to``, the holder reads them from the history."""
        last = events[-1][0] if events else (up_to or 0)
        carried = [(seq, data.decode()) for seq, data in events]
        self._post(owner, Message(k="session", s=session_id, q=last, e=carried))

    async def adopt(self, holder: str, job_id: str, data: dict[str, Any]) -> bool:
        return await self._send(holder, Message(k="adopt", j=job_id, d=data))

    def adopt_entry(self, job_id: str, data: dict[str, Any]) -> bytes:
        """An inbox entry handing a job over, for the reservation to write (see Handover)."""
        msg = Message(k="adopt", i=self.next_message_id(), o=self.me, j=job_id, d=data)
        return _enc.encode([msg])

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

    async def session_moved(self, old_owner: str, session_id: str) -> None:
        await self._send(old_owner, Message(k="moved", s=session_id))

    async def broadcast(self, kind: str, node_id: str) -> None:
        for inst in self.live - {self.me}:
            await self._send(inst, Message(k=kind, n=node_id))

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
        tick = 0
        while True:
            try:
                run_id = await self.store.server_run_id()
                restarted = self.run_id is not None and run_id != self.run_id
                self.run_id = run_id
                await self.store.instance_alive(self.me, INSTANCE_TTL)
                self.live = await self.store.live_instances() | {self.me}
                if restarted:
                    log.warning("cluster.redis_restarted", instance_id=self.me)
                    await self.sched.restore_shared_state()
                if tick % 2 == 0 or restarted:
                    await self.store.sync_nodes(self.live)
                if not self.healthy:
                    log.info("cluster.redis_back", instance_id=self.me)
                    self.healthy = True
                    await self.sched.redis_recovered()
            except DependencyDown as exc:
                if self.healthy:
                    log.error("cluster.redis_down", instance_id=self.me, error=str(exc))
                self.healthy = False
            tick += 1
            await asyncio.sleep(0.5)

    async def _inbox(self) -> None:
        while True:
            try:
                # the previous batch is acked in the same request that reads the next one
                batch = await self.store.read_inbox(self.me, block_ms=500, ack=self._unacked)
                self._unacked = []
            except DependencyDown:
                await asyncio.sleep(0.5)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep reading whatever one bad message did
                log.error("cluster.inbox_failed", error=repr(exc))
                await asyncio.sleep(0.2)
                continue
            ids = []
            for entry_id, raw in batch:
                ids.append(entry_id)
                try:
                    messages = _dec.decode(raw)
                except msgspec.DecodeError:
                    log.warning("cluster.bad_message", raw=raw[:200])
                    continue
                for msg in messages:
                    if self._fresh(msg):
                        if msg.k == "session":  # the most frequent kind: no await needed
                            self._deliver(msg)
                        else:
                            await self._receive(msg)
            self._unacked = ids

    def _fresh(self, msg: Message) -> bool:
        """False for a message already handled (at-least-once delivery: de-duplicated here)."""
        seen = self._seen
        if msg.i in seen:
            log.debug("cluster.duplicate_message", kind=msg.k, message_id=msg.i)
            return False
        seen[msg.i] = None
        if len(seen) > SEEN_IDS:
            seen.popitem(last=False)
        return True

    def _deliver(self, msg: Message) -> None:
        session = self.sched.sessions.get(SessionId(msg.s))
        if session is not None:
            session.deliver([(seq, data.encode()) for seq, data in msg.e], msg.q)

    async def _receive(self, msg: Message) -> None:
        try:
            await self._handle(msg)
        except DependencyDown:
            pass
        except Exception as exc:
            log.error("cluster.handle_failed", kind=msg.k, error=repr(exc))

    async def _handle(self, msg: Message) -> None:
        s = self.sched
        kind = msg.k
        if kind == "adopt":
            await s.adopt_handed_over(msg.j, msg.d)
        elif kind == "to_node":
            if msg.j:
                self.remember_owner(msg.j, msg.o)
            await s.write_local_node(NodeId(msg.n), msg.f, from_instance=msg.o, job_id=msg.j)
        elif kind == "node_msg":
            await s.routed_node_message(NodeId(msg.n), msg.f)
        elif kind == "moved":
            await s.session_moved_away(SessionId(msg.s), new_owner=msg.o)
        elif kind == "node":
            await self.store.refresh_node(NodeId(msg.n), self.live)
            await s.capacity_changed()
        elif kind == "gone":
            await self.store.refresh_node(NodeId(msg.n), self.live)
            await s.remote_node_gone(NodeId(msg.n))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.healthy:
                continue
            try:
                claimed = await self.store.claim_expired_jobs(self.me, time.time(), self.live, 100)
            except DependencyDown:
                continue
            for rec in claimed:
                log.warning("job.taken_over", job_id=rec.job_id, from_instance="dead", state=rec.state)
                await self.sched.adopt_job(rec, expired=True)

    async def claim(self, job_id: str) -> bool:
        """Take over one job whose owner is dead (its result arrived here)."""
        ok = await self.store.claim_job(job_id, self.me, self.live)
        if ok:
            rec = await self.store.load_job(JobId(job_id))
            if rec is not None:
                log.warning("job.taken_over", job_id=job_id, reason="result arrived for a dead owner's job")
                await self.sched.adopt_job(rec, expired=False)
        return ok
