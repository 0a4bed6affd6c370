"""Node selection. Pure: no I/O, no clock.

Two selectors share one outcome type:

* **pooled** (default, two-level): pools are named by their sorted language
  set; the eligible pools are those containing both languages, tried smallest
  language set first (specialised nodes before generalists); inside a pool a
  bounded random sample of members with a free slot is checked and the least
  loaded qualifying node wins (power of two choices). Cost is bounded by the
  sample budget, not by the number of nodes.
* **flat**: checks every node; for small fleets and as a reference.

``preferred_node_id`` is honoured when the node qualifies; otherwise the
fallback reason (``node_unavailable``, ``node_not_in_pool``,
``node_missing_models``) is recorded and normal selection runs.

The outcome lists candidates best first: the shell reserves the first one
and, if a concurrent reservation beat it, the next one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from .ids import NodeId
from .nodes import NodeView, pool_languages
from .stages import Requirement


class Reason(StrEnum):
    NO_AVAILABLE_POOL = "no_available_pool"
    NO_CAPACITY = "no_capacity"
    MISSING_MODELS = "missing_models"
    EXCLUDED = "excluded"
    OFFLINE = "offline"


class Fallback(StrEnum):
    NODE_UNAVAILABLE = "node_unavailable"
    NODE_NOT_IN_POOL = "node_not_in_pool"
    NODE_MISSING_MODELS = "node_missing_models"


#: Closest-to-success first: the reason a client is told when nothing was found.
_REASON_RANK = (
    Reason.NO_CAPACITY,
    Reason.EXCLUDED,
    Reason.OFFLINE,
    Reason.MISSING_MODELS,
    Reason.NO_AVAILABLE_POOL,
)


@dataclass(slots=True)
class Breakdown:
    """Why candidates were turned down."""

    considered: int = 0
    counts: dict[Reason, int] = field(default_factory=dict)

    def add(self, reason: Reason) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def best_reason(self) -> Reason:
        for reason in _REASON_RANK:
            if self.counts.get(reason):
                return reason
        return Reason.NO_AVAILABLE_POOL


@dataclass(slots=True)
class Outcome:
    selector: str
    candidates: list[NodeId]
    breakdown: Breakdown
    preferred_used: bool = False
    fallback: Fallback | None = None
    eligible_pools: list[str] = field(default_factory=list)
    selected_pool: str | None = None
    pool_count: int = 0
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.candidates)

    @property
    def reason(self) -> Reason | None:
        return None if self.candidates else self.breakdown.best_reason()


@dataclass(frozen=True, slots=True)
class Request:
    src_lang: str
    tgt_lang: str
    requirements: tuple[Requirement, ...]
    excluded: frozenset[NodeId] = frozenset()
    preferred_node_id: NodeId | None = None
    #: when set, only these nodes may take the job (a streaming job: local streaming nodes)
    only: frozenset[NodeId] | None = None


class NodeSource(Protocol):
    """What selection needs to read; the state store provides it."""

    def get(self, node_id: NodeId) -> NodeView | None: ...

    def pools_with(self, lang: str) -> Iterable[str]: ...

    def pool_count(self) -> int: ...

    def repair_available(self, lang: str) -> bool:
        """Whether any node offers repair for ``lang`` (then jobs include the repair stage)."""
        ...

    def sample_free(self, pool: str, k: int, rng: random.Random) -> Sequence[NodeView]:
        """Up to ``k`` distinct random members of ``pool`` that have a free slot."""
        ...

    def all_nodes(self) -> Iterable[NodeView]: ...

    def pool_names(self, limit: int = 10) -> list[str]:
        """The first pools by name (for an operator reading why a selection failed)."""
        ...


def _check(node: NodeView, req: Request) -> Reason | None:
    if not node.online:
        return Reason.OFFLINE
    if node.node_id in req.excluded or (req.only is not None and node.node_id not in req.only):
        return Reason.EXCLUDED
    if not all(node.capabilities.offers(r) for r in req.requirements):
        return Reason.MISSING_MODELS
    if node.free_slots <= 0:
        return Reason.NO_CAPACITY
    return None


def _pool_fits(pool: str, req: Request) -> bool:
    langs = pool_languages(pool)
    return req.src_lang in langs and req.tgt_lang in langs


def _preferred(src: NodeSource, req: Request) -> tuple[NodeId | None, Fallback | None]:
    pid = req.preferred_node_id
    if pid is None:
        return None, None
    node = src.get(pid)
    if (
        node is None
        or not node.online
        or pid in req.excluded
        or (req.only is not None and pid not in req.only)
        or node.free_slots <= 0
    ):
        return None, Fallback.NODE_UNAVAILABLE
    if not _pool_fits(node.pool, req):
        return None, Fallback.NODE_NOT_IN_POOL
    if not all(node.capabilities.offers(r) for r in req.requirements):
        return None, Fallback.NODE_MISSING_MODELS
    return pid, None


def _rank(nodes: list[NodeView], rng: random.Random) -> list[NodeId]:
    rng.shuffle(nodes)  # random tie-break among equal load
    nodes.sort(key=lambda n: n.load)
    return [n.node_id for n in nodes]


def select_pooled(
    src: NodeSource,
    req: Request,
    rng: random.Random,
    *,
    sample_size: int = 2,
    sample_budget: int = 16,
) -> Outcome:
    preferred, fallback = _preferred(src, req)
    if preferred is not None:
        return Outcome("pooled", [preferred], Breakdown(), preferred_used=True)
    pools = sorted(
        (p for p in src.pools_with(req.src_lang) if _pool_fits(p, req)),
        key=lambda p: (len(pool_languages(p)), p),
    )
    out = Outcome("pooled", [], Breakdown(), fallback=fallback, eligible_pools=pools)
    out.pool_count = src.pool_count()
    for pool in pools:
        out.attempts += 1
        sampled = src.sample_free(pool, sample_budget, rng)
        if not sampled:
            out.breakdown.add(Reason.NO_CAPACITY)
            continue
        good: list[NodeView] = []
        for node in sampled:
            out.breakdown.considered += 1
            why = _check(node, req)
            if why is None:
                good.append(node)
                if len(good) >= sample_size:
                    break
            else:
                out.breakdown.add(why)
        if good:
            out.candidates = _rank(good, rng)
            out.selected_pool = pool
            return out
    return out


def select_flat(src: NodeSource, req: Request, rng: random.Random) -> Outcome:
    preferred, fallback = _preferred(src, req)
    if preferred is not None:
        return Outcome("flat", [preferred], Breakdown(), preferred_used=True)
    out = Outcome("flat", [], Breakdown(), fallback=fallback)
    good: list[NodeView] = []
    for node in src.all_nodes():
        out.breakdown.considered += 1
        why = _check(node, req)
        if why is None:
            good.append(node)
        else:
            out.breakdown.add(why)
    out.candidates = _rank(good, rng)
    return out


Selector = Callable[[NodeSource, Request, random.Random], Outcome]

SELECTORS: dict[str, Selector] = {"pooled": select_pooled, "flat": select_flat}
