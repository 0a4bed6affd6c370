"""The ``StateStore`` contract shared by the memory and Redis stores (DESIGN §5).

All methods are async so a networked store fits; the memory store answers at
once. ``reserve`` is atomic: check capacity and take a slot in one step.
Selection reads nodes through :meth:`StateStore.nodes` — a synchronous
:class:`~linguamesh.core.selection.NodeSource` view that the store keeps
current — so selection itself stays pure and cheap.
"""

from __future__ import annotations

from typing import Protocol

from ..core.ids import JobId, NodeId, SessionId
from ..core.nodes import NodeView
from ..core.selection import NodeSource


class DependencyDown(Exception):
    """The shared state backend cannot be reached; fail closed."""


class StateStore(Protocol):
    # nodes ---------------------------------------------------------------
    async def register_node(self, node: NodeView, owner: str) -> None: ...

    async def remove_node(self, node_id: NodeId) -> None: ...

    async def heartbeat(self, node_id: NodeId, running_jobs: int, now: float) -> None: ...

    def nodes(self) -> NodeSource: ...

    # reservations --------------------------------------------------------
    async def reserve(self, node_id: NodeId, job_id: JobId, attempt_id: int, ttl: float) -> bool:
        """Atomically take a slot on ``node_id``; False when full or unknown."""
        ...

    async def release(self, node_id: NodeId, job_id: JobId, attempt_id: int) -> bool: ...

    # idempotency ---------------------------------------------------------
    async def bind_request(self, session_id: SessionId, key: str, job_id: JobId) -> JobId | None:
        """Bind ``key`` to ``job_id`` unless bound already; return the earlier job id if so."""
        ...

    # session history -----------------------------------------------------
    async def append_event(self, session_id: SessionId, seq: int, event: bytes) -> None:
        """Keep ``event`` (already encoded with its ``seq``) in the session's history."""
        ...

    async def events_since(self, session_id: SessionId, last_seq: int) -> list[tuple[int, bytes]]:
        """Every kept event after ``last_seq``; raises ReplayGap when some are gone."""
        ...

    async def ack_events(self, session_id: SessionId, seq: int) -> None: ...

    async def drop_session(self, session_id: SessionId) -> None: ...

    async def ping(self) -> None:
        """Raise DependencyDown when the store cannot be reached."""
        ...

    async def close(self) -> None: ...
