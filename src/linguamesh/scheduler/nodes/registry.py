"""The nodes connected to this instance: register, heartbeat, gone, sweep, send.

The registry owns the node sockets (:class:`NodeConn`); the shared view of every
node (capabilities, pools, slots) lives in the state store's node index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ... import protocol as p
from ...core.ids import NodeId
from ...core.nodes import NodeView
from ...observability.logging import get_logger
from ...observability.metrics import Metrics
from ...protocol import ErrorCode, ProtocolError
from ...state.base import DependencyDown, StateStore
from ..cluster.remote import Remote
from ..config import SchedulerConfig
from ..edge.credentials import NodeCredentials, Proof
from ..records import capabilities
from ..tasks import Tasks
from ..transport import Transport

log = get_logger("linguamesh.scheduler")

#: A socket write that takes longer than this means the peer is gone.
SEND_TIMEOUT = 10.0


#: Ack timeouts in a row that make a node an outlier, and how long it then sits out.
OUTLIER_MISSES = 3
OUTLIER_SIT_OUT = 60.0


@dataclass(eq=False)
class NodeConn:
    node_id: NodeId
    transport: Transport
    version: str
    models: list[p.ModelInfo]
    hardware: dict[str, Any] | None
    connected_at: float
    last_seen: float
    model_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    heartbeat_writing: bool = False
    draining: bool = False
    #: the node takes streaming jobs (capability ``streaming``)
    streaming: bool = False
    #: the slots it registered with (its record has 0 while it drains or sits out)
    slots: int = 0
    #: ack timeouts in a row (an outlier sits out OUTLIER_SIT_OUT after OUTLIER_MISSES)
    ack_misses: int = 0
    sitting_out_until: float | None = None

    async def send(self, msg: msgspec.Struct) -> bool:
        """Write one message; True only when the write finished."""
        return await self.send_frame(p.encode_str(msg))

    async def send_frame(self, frame: str) -> bool:
        if self.closed:
            return False
        try:
            async with self.lock, asyncio.timeout(SEND_TIMEOUT):
                await self.transport.send_text(frame)
            return True
        except Exception as exc:  # noqa: BLE001 - the transports raise many types (OSError, RuntimeError,
            # WebSocketDisconnect, TimeoutError); each one means the write did not finish
            log.debug("send.failed", node_id=self.node_id, error=repr(exc))
            return False


class Registry:
    def __init__(
        self,
        config: SchedulerConfig,
        store: StateStore,
        remote: Remote,
        metrics: Metrics,
        tasks: Tasks,
        clock: Callable[[], float],
        credentials: NodeCredentials,
    ) -> None:
        self.config = config
        self.store = store
        self.remote = remote
        self.metrics = metrics
        self.tasks = tasks
        self.clock = clock
        self.credentials = credentials
        self.nodes: dict[NodeId, NodeConn] = {}

    def admit(self, msg: p.NodeRegister) -> NodeConn | None:
        """Check a ``node_register``; returns the connection it replaces (the node's own token
        lets a node replace its first connection): the caller makes that one gone first."""
        p.check_version(msg.protocol_version)
        if not msg.node_id or len(msg.node_id) > 128:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "field `node_id` must be 1-128 characters")
        proof = self.credentials.check(msg.node_id, msg.token)
        self._check_slots(msg.max_concurrent_jobs)
        self._check_capabilities(msg.capabilities)
        node_id = NodeId(msg.node_id)
        old = self.nodes.get(node_id)
        if old is not None:
            if proof is not Proof.OWN:
                log.warning("node.id_in_use", node_id=node_id, proof=proof.value)
                raise ProtocolError(
                    ErrorCode.NODE_ID_IN_USE,
                    f"node {node_id!r} is connected; a second connection is refused until the first is "
                    "gone (a node's own token from --node-tokens lets it replace the first)",
                )
            log.info("node.replaced", node_id=node_id)
        return old

    async def add(self, msg: p.NodeRegister, conn: Transport, limits: p.Limits) -> NodeConn:
        """Register an admitted node (:meth:`admit`) and answer it."""
        node_id = NodeId(msg.node_id)
        caps = capabilities(msg.capabilities)
        now = self.clock()
        view = NodeView(node_id, caps, msg.max_concurrent_jobs, last_heartbeat=now)
        view.streaming = msg.capabilities.streaming
        await self.store.register_node(view, self.config.instance_id)
        nc = NodeConn(node_id, conn, msg.version, msg.models, msg.hardware, now, now)
        nc.streaming = msg.capabilities.streaming
        nc.slots = msg.max_concurrent_jobs
        self.nodes[node_id] = nc
        self.metrics.inc("nodes_registered")
        log.info(
            "node.registered",
            node_id=node_id,
            pool=view.pool,
            max_concurrent_jobs=msg.max_concurrent_jobs,
            version=msg.version,
            unacked_results=len(msg.unacked_results),
        )
        await nc.send(
            p.NodeRegisterAck(
                node_id=node_id,
                heartbeat_interval_s=self.config.heartbeat_interval,
                pools=[view.pool],
                limits=limits,
            )
        )
        self.remote.node_changed("node", node_id)
        return nc

    async def _node_draining(self, nc: NodeConn) -> None:
        """The node is shutting down: it counts as full everywhere (no slots), so no new job
        is sent to it; the jobs it runs finish. Its record keeps its capabilities."""
        nc.draining = True
        view = self.store.nodes().get(nc.node_id)
        log.info("node.draining", node_id=nc.node_id, reserved_slots=view.reserved if view else None)
        if view is not None:
            await self.store.register_node(
                NodeView(nc.node_id, view.capabilities, 0), self.config.instance_id
            )
            self.remote.node_changed("node", nc.node_id)

    # ------------------------------------------------------------------ outliers

    def acked(self, node_id: NodeId) -> None:
        """The node acked a job in time: its run of ack timeouts ends."""
        nc = self.nodes.get(node_id)
        if nc is not None:
            nc.ack_misses = 0

    async def ack_timed_out(self, node_id: NodeId) -> None:
        """A job the node was sent was not acked in time. OUTLIER_MISSES in a row: the node
        sits out OUTLIER_SIT_OUT seconds (no slots in the shared view, like a draining
        node; its jobs in flight carry on), as a load balancer's outlier detection does."""
        nc = self.nodes.get(node_id)
        if nc is None or nc.draining:
            return
        nc.ack_misses += 1
        if nc.ack_misses < OUTLIER_MISSES or nc.sitting_out_until is not None:
            return
        nc.sitting_out_until = self.clock() + OUTLIER_SIT_OUT
        self.metrics.inc("nodes_sat_out")
        log.warning("node.sitting_out", node_id=node_id, ack_timeouts=nc.ack_misses, seconds=OUTLIER_SIT_OUT)
        await self._set_slots(nc, 0)
        self.tasks.call_later(OUTLIER_SIT_OUT, lambda: self.tasks.spawn(self._back_in(nc), "node-back-in"))

    async def _back_in(self, nc: NodeConn) -> None:
        nc.sitting_out_until = None
        nc.ack_misses = 0
        if nc.closed or nc.draining or self.nodes.get(nc.node_id) is not nc:
            return
        log.info("node.back_in", node_id=nc.node_id, slots=nc.slots)
        await self._set_slots(nc, nc.slots)

    async def _set_slots(self, nc: NodeConn, slots: int) -> None:
        view = self.store.nodes().get(nc.node_id)
        if view is None:
            return
        try:
            nv = NodeView(nc.node_id, view.capabilities, slots, streaming=nc.streaming and slots > 0)
            await self.store.register_node(nv, self.config.instance_id)
        except DependencyDown as exc:
            log.warning("node.slots_not_written", node_id=nc.node_id, error=str(exc))
            return
        self.remote.node_changed("node", nc.node_id)

    def _check_slots(self, slots: int) -> None:
        if not 1 <= slots <= self.config.max_node_slots:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"field `max_concurrent_jobs` must be 1-{self.config.max_node_slots}"
            )

    def _check_capabilities(self, caps: p.Capabilities) -> None:
        """Capability lists stay within the configured bounds."""
        limit = self.config.max_capability_entries
        for name in ("asr_languages", "nmt_pairs", "tts_languages", "repair_languages", "semantic_languages"):
            entries = getattr(caps, name)
            if len(entries) > limit:
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE,
                    f"field `capabilities.{name}` has {len(entries)} entries (at most {limit})",
                )
            if any(len(x) > 32 for e in entries for x in ((e,) if isinstance(e, str) else e)):
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE, f"field `capabilities.{name}`: a language code is too long"
                )

    async def heartbeat(self, nc: NodeConn, msg: p.NodeHeartbeat) -> None:
        nc.last_seen = self.clock()
        if msg.draining and not nc.draining:
            await self._node_draining(nc)
        if msg.model_stats is not None:
            nc.model_stats = msg.model_stats
        if msg.capabilities is not None:
            self._check_capabilities(msg.capabilities)
            view = self.store.nodes().get(nc.node_id)
            if view is not None:
                new_caps = capabilities(msg.capabilities)
                if new_caps != view.capabilities:
                    nv = NodeView(nc.node_id, new_caps, view.max_concurrent_jobs, streaming=nc.streaming)
                    await self.store.register_node(nv, self.config.instance_id)
                    log.info("node.capabilities_changed", node_id=nc.node_id, pool=nv.pool)
        if not nc.heartbeat_writing:  # at most one write in flight per node, off the reading path
            nc.heartbeat_writing = True
            self.tasks.spawn(self._write_heartbeat(nc, msg.running_jobs), "node-heartbeat")

    async def _write_heartbeat(self, nc: NodeConn, running_jobs: int) -> None:
        """The node's heartbeat into the shared view. Not awaited by the node's socket
        reader: a stalled store must not stop this instance hearing the node (it would
        drop a live node for silence)."""
        try:
            await self.store.heartbeat(nc.node_id, running_jobs, nc.last_seen)
        except DependencyDown:
            pass  # the next heartbeat writes it; the record goes stale only if none gets through
        finally:
            nc.heartbeat_writing = False

    async def gone(self, nc: NodeConn) -> bool:
        """Forget a node's socket; False when it was already gone."""
        if nc.closed:
            return False
        nc.closed = True
        if self.nodes.get(nc.node_id) is nc:
            del self.nodes[nc.node_id]
            try:
                await self.store.remove_node(nc.node_id, self.config.instance_id)
            except DependencyDown as exc:  # its record goes stale and offline by itself
                log.warning("node.remove_failed", node_id=nc.node_id, error=str(exc))
        self.remote.node_changed("gone", nc.node_id)
        return True

    def streaming_nodes(self) -> frozenset[NodeId]:
        """The streaming nodes held here (streamed audio is forwarded on their sockets)."""
        return frozenset(n for n, c in self.nodes.items() if c.streaming and not c.draining)

    def streaming_anywhere(self) -> frozenset[NodeId]:
        """The streaming nodes of the whole cluster: those held here, and (instances on
        Redis) those other instances hold — their audio is relayed through their holder's
        inbox (``UtteranceStream``), so a session gets live captions whichever instance
        holds it."""
        local = self.streaming_nodes()
        if not self.remote.shared:
            return local
        remote = (
            v.node_id
            for v in self.store.nodes().all_nodes()
            if v.streaming and v.online and v.max_concurrent_jobs > 0 and v.node_id not in self.nodes
        )
        return local | frozenset(remote)

    def streams(self, node_id: NodeId) -> bool:
        nc = self.nodes.get(node_id)
        return nc is not None and nc.streaming and not nc.closed

    async def send(self, node_id: NodeId, msg: msgspec.Struct, job_id: str = "") -> bool:
        """Write to a node held here, or route through its holder's inbox.

        True when the local write finished or the message is in the holder's inbox
        (then the ack timeout covers a loss)."""
        nc = self.nodes.get(node_id)
        if nc is not None:
            return await nc.send(msg)
        holder = self.remote.node_holder(node_id)
        if holder is None:
            return False
        return await self.remote.to_node(holder, node_id, p.encode_str(msg), job_id)

    async def write_local(self, node_id: NodeId, frame: str, from_instance: str, job_id: str) -> None:
        """A frame another instance routed to a node held here."""
        nc = self.nodes.get(node_id)
        if nc is None or nc.closed:
            log.warning(
                "send.routed_target_missing", node_id=node_id, job_id=job_id, from_instance=from_instance
            )
            return
        if await nc.send_frame(frame):
            log.debug("send.local", node_id=node_id, job_id=job_id, from_instance=from_instance)
        else:
            log.warning("send.local_failed", node_id=node_id, job_id=job_id)

    def silent(self) -> list[NodeConn]:
        """The nodes that missed their heartbeats (the caller makes them gone)."""
        interval = self.config.heartbeat_interval
        now = self.clock()
        limit = interval * self.config.heartbeat_misses
        out = []
        for nc in list(self.nodes.values()):
            if now - nc.last_seen > limit:
                log.warning("node.heartbeat_lost", node_id=nc.node_id, silent_s=round(now - nc.last_seen, 1))
                out.append(nc)
        return out
