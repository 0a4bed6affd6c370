"""Who may register as a node.

Two kinds of credential, which may be combined:

* ``--node-token``: one token shared by every node. It proves that a node belongs
  to the operator, not which node it is.
* ``--node-tokens FILE``: one token per node, lines ``node_id token`` (``#`` starts a
  comment). A node listed there may register only under its own id, with its own
  token; it is also the only credential that proves *which* node is connecting, so
  only it lets a new connection replace a live one of the same id (the node came
  back before its old socket was noticed dead). Without it a second registration of
  a live id is refused with ``node_id_in_use`` until the first connection is gone.

All comparisons are constant-time.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from ...protocol import ErrorCode, ProtocolError
from ..tokens import same_token
from .linefiles import entries


class Proof(Enum):
    #: the node presented its own per-node token
    OWN = "own"
    #: the node presented the shared token
    SHARED = "shared"
    #: no credentials are configured (loopback, or --insecure)
    NONE = "none"


class NodeCredentials:
    def __init__(self, shared: str | None = None, per_node: dict[str, str] | None = None) -> None:
        self.shared = shared
        self.per_node = per_node or {}

    @classmethod
    def load(cls, shared: str | None, path: str | None) -> NodeCredentials:
        """Read the per-node tokens file; ValueError names the line at fault."""
        per_node: dict[str, str] = {}
        if path is not None:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read the node tokens file {path}: {exc.strerror}") from None
            for n, parts in entries(text):
                if len(parts) != 2:
                    raise ValueError(f"{path}:{n}: expected `node_id token`, got {len(parts)} field(s)")
                node_id, token = parts
                if node_id in per_node:
                    raise ValueError(f"{path}:{n}: node {node_id!r} is listed twice")
                if len(token) < 16:
                    raise ValueError(f"{path}:{n}: the token of {node_id!r} is shorter than 16 characters")
                per_node[node_id] = token
            if not per_node:
                raise ValueError(f"the node tokens file {path} lists no node")
        return cls(shared, per_node)

    @property
    def configured(self) -> bool:
        return self.shared is not None or bool(self.per_node)

    def check(self, node_id: str, token: str | None) -> Proof:
        """What ``token`` proves for ``node_id``; ProtocolError(unauthorized) if nothing."""
        given = token or ""
        own = self.per_node.get(node_id)
        if own is not None:
            if same_token(own, given):
                return Proof.OWN
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"node {node_id!r} must present its own token")
        if self.shared is not None:
            if same_token(self.shared, given):
                return Proof.SHARED
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "node token is missing or wrong")
        if self.per_node:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"node {node_id!r} has no credential here")
        return Proof.NONE
