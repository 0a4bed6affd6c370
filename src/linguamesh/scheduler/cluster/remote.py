"""The other scheduler instances, as the parts see them: the :class:`Remote` port.

Two implementations: :class:`NoRemote` for a single instance (no other instance exists,
so nothing is routed, handed over or relayed) and the bridge (``bridge.py``) when
instances share Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ...core.ids import JobId, NodeId, SessionId

if TYPE_CHECKING:
    from .relay import SessionRelay


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

    def relay(self, session_id: SessionId) -> SessionRelay | None:
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

    async def ask(self, instance: str, kind: str, arg: str = "") -> dict[str, Any] | None:
        """What only ``instance`` knows (a job it runs, its overview); None if it does not answer."""
        ...

    async def ask_all(self, kind: str, arg: str = "") -> dict[str, dict[str, Any]]:
        """Every other live instance's answer, by instance id."""
        ...

    def stream_audio(
        self, holder: str, job_id: str, offset: int, audio: bytes, size: int | None = None
    ) -> None:
        """Relay more of a live utterance to the instance running its job (in order)."""
        ...

    def speech_ended(self, holder: str, session_id: str, job_id: str, size: int, reason: str) -> None:
        """Tell the session's holder that the node of a relayed live job heard the speech end."""
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

    def relay(self, session_id: SessionId) -> SessionRelay | None:
        return None

    async def forward(self, node_id: NodeId, job_id: str, frame: str, claim: bool) -> bool:
        return False

    async def recover(self, job_id: str) -> bool:
        return False

    async def session_claimed(self, session_id: SessionId, prev_owner: str | None) -> None:
        pass

    async def ask(self, instance: str, kind: str, arg: str = "") -> dict[str, Any] | None:
        return None

    async def ask_all(self, kind: str, arg: str = "") -> dict[str, dict[str, Any]]:
        return {}

    def stream_audio(
        self, holder: str, job_id: str, offset: int, audio: bytes, size: int | None = None
    ) -> None:
        pass

    def speech_ended(self, holder: str, session_id: str, job_id: str, size: int, reason: str) -> None:
        pass
