"""What the scheduler's parts need from each other, as small protocols.

The parts depend on these, not on each other's classes, so imports go one way
(see ``docs/architecture.md``): the service wires the concrete parts together.
:class:`NoRemote` is the remote of a single instance: no other instance exists,
so nothing is routed, handed over or relayed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

import msgspec

from ... import protocol as p
from ...core.ids import JobId, NodeId, SessionId
from ...core.jobs import Job
from ...observability.metrics import Metrics
from ...state.base import JobEnd, JobRecord, StateStore
from ..config import SchedulerConfig
from ..jobs.jobrun import JobRun
from ..tasks import Tasks


class Relay(Protocol):
    """Events for a session another instance holds, on their way into its history."""

    def emit(self, msg: msgspec.Struct) -> None: ...

    def emit_result(self, tgt_lang: str, index: int, msg: msgspec.Struct, end: JobEnd | None,
                    on_end: Any) -> None: ...  # fmt: skip


class Outbox(Protocol):
    """Events for a session, wherever it is held (the desk)."""

    def emit(self, session_id: SessionId, msg: msgspec.Struct) -> None: ...

    def emit_result(self, job: Job, result: p.TranslationResult, end: JobEnd, on_end: Any) -> bool:
        """Queue a job's result into its session's ordered stream, the job ending (``end``)
        in the same store step; ``on_end()`` runs after it. False when no instance holds
        the session (the caller ends the job itself)."""
        ...


class JobControl(Protocol):
    """What the desk needs from the runner."""

    async def cancel(self, job_ids: Iterable[JobId], reason: str) -> None: ...


class Driver(Protocol):
    """What the dispatcher needs from the runner: run a job's selection again."""

    async def reselect(self, run: JobRun) -> None: ...


class Remote(Protocol):
    """The other scheduler instances, as the parts see them (the bridge)."""

    #: the state is shared with other instances (records are kept for take-over)
    shared: bool

    def node_holder(self, node_id: NodeId) -> str | None:
        """The other instance that holds ``node_id``'s socket, if any."""
        ...

    async def to_node(self, holder: str, node_id: NodeId, frame: str, job_id: str) -> bool:
        """Route a frame to a node another instance holds; True when it is in its inbox."""
        ...

    def node_changed(self, kind: str, node_id: NodeId) -> None:
        """Tell the other instances a node registered (``node``) or left (``gone``)."""
        ...

    def handover_entry(self, job_id: JobId, data: dict[str, Any]) -> bytes:
        """An inbox entry handing a job over, for the reservation to write."""
        ...

    async def hand_over(self, holder: str, job_id: JobId, data: dict[str, Any]) -> bool: ...

    def relay(self, session_id: SessionId) -> Relay | None:
        """Where events go for a session no socket here holds (None: nowhere)."""
        ...

    async def forward(self, node_id: NodeId, job_id: str, frame: str, claim: bool) -> bool:
        """A node's message about a job not running here: True when it went to the job's
        live owner. With ``claim`` (a result), a job of a dead owner is taken over here."""
        ...

    async def recover(self, job_id: str) -> bool:
        """A result for a job this instance owns by the shared record but does not run (its
        previous run under the same id owned it): take the job up from the record. True
        when it now runs here."""
        ...

    async def session_claimed(self, session_id: SessionId, prev_owner: str | None) -> None:
        """This instance took the session over from ``prev_owner``."""
        ...


class NoRemote:
    """A single instance: there is nobody else."""

    shared = False

    def node_holder(self, node_id: NodeId) -> str | None:
        return None

    async def to_node(self, holder: str, node_id: NodeId, frame: str, job_id: str) -> bool:
        return False

    def node_changed(self, kind: str, node_id: NodeId) -> None:
        pass

    def handover_entry(self, job_id: JobId, data: dict[str, Any]) -> bytes:
        raise RuntimeError("a single instance hands nothing over")

    async def hand_over(self, holder: str, job_id: JobId, data: dict[str, Any]) -> bool:
        return False

    def relay(self, session_id: SessionId) -> Relay | None:
        return None

    async def forward(self, node_id: NodeId, job_id: str, frame: str, claim: bool) -> bool:
        return False

    async def recover(self, job_id: str) -> bool:
        return False

    async def session_claimed(self, session_id: SessionId, prev_owner: str | None) -> None:
        pass


class InboxHandler(Protocol):
    """What the cluster's inbox reader and loops call on this instance (the bridge)."""

    async def adopt_handed_over(self, job_id: str, data: dict[str, Any]) -> None: ...

    async def write_local_node(
        self, node_id: NodeId, frame: str, from_instance: str, job_id: str
    ) -> None: ...

    async def routed_node_message(self, node_id: NodeId, frame: str) -> None: ...

    async def session_moved_away(self, session_id: SessionId, new_owner: str) -> None: ...

    def deliver(self, session_id: SessionId, events: list[tuple[int, bytes]], seq: int) -> None: ...

    def hold(self, session_id: SessionId, held: list[tuple[str, int, bytes]]) -> None:
        """Results another instance pushed wait in the ordering buffer: keep copies of them
        (``(tgt_lang, index, payload)``) with the session, if it is held here."""
        ...

    async def capacity_changed(self) -> None: ...

    async def remote_node_gone(self, node_id: NodeId) -> None: ...

    def knows(self, job_id: str) -> bool:
        """Does the job run here, or did it end here (its result is on its way to the history)?"""
        ...

    async def adopt_job(self, rec: JobRecord, *, expired: bool) -> None: ...

    async def restore_shared_state(self) -> None: ...

    async def redis_recovered(self) -> None: ...


class Env(NamedTuple):
    """What every part shares: settings, the state store, the remote, metrics, background
    tasks and the clock (monotonic seconds). Unpacks in that order."""

    config: SchedulerConfig
    store: StateStore
    remote: Remote
    metrics: Metrics
    tasks: Tasks
    clock: Callable[[], float]
