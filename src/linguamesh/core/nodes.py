"""What the scheduler knows about a node, and the pool it belongs to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .ids import NodeId
from .stages import Requirement


@dataclass(frozen=True, slots=True)
class NodeCapabilities:
    asr: frozenset[str] = frozenset()
    repair: frozenset[str] = frozenset()
    nmt: frozenset[tuple[str, str]] = frozenset()
    tts: frozenset[str] = frozenset()

    def offers(self, req: Requirement) -> bool:
        if req.stage == "asr":
            return req.langs[0] in self.asr
        if req.stage == "repair":
            return req.langs[0] in self.repair
        if req.stage == "nmt":
            return (req.langs[0], req.langs[1]) in self.nmt
        if req.stage == "tts":
            return req.langs[0] in self.tts
        return False

    def languages(self) -> frozenset[str]:
        langs = set(self.asr) | set(self.tts) | set(self.repair)
        for a, b in self.nmt:
            langs.add(a)
            langs.add(b)
        return frozenset(langs)

    def servable_pairs(self) -> set[tuple[str, str]]:
        """(src, tgt) pairs this node can run end to end (asr(src), nmt, text out)."""
        pairs = {(a, b) for a, b in self.nmt if a in self.asr}
        pairs |= {(a, a) for a in self.asr}
        return pairs


def pool_name(caps: NodeCapabilities) -> str:
    """Pools are named by the sorted languages of the pairs the node can serve end to end
    (ASR of the source, MT of the pair), e.g. ``en-zh``: not every language one of its
    engines touches (eSpeak speaks ~90; a node serving en<->es is in pool ``en-es``)."""
    langs = {lang for pair in caps.servable_pairs() for lang in pair}
    return "-".join(sorted(langs)) if langs else "empty"


def pool_languages(name: str) -> frozenset[str]:
    return frozenset() if name == "empty" else frozenset(name.split("-"))


@dataclass(slots=True)
class NodeView:
    """A node as selection sees it."""

    node_id: NodeId
    capabilities: NodeCapabilities
    max_concurrent_jobs: int
    reserved: int = 0
    online: bool = True
    running_jobs: int = 0
    last_heartbeat: float = 0.0
    pool: str = field(default="")
    #: takes streaming jobs (audio forwarded as it is spoken): live captions
    streaming: bool = False

    def __post_init__(self) -> None:
        if not self.pool:
            self.pool = pool_name(self.capabilities)

    @property
    def free_slots(self) -> int:
        return self.max_concurrent_jobs - self.reserved

    @property
    def load(self) -> float:
        return self.reserved / self.max_concurrent_jobs if self.max_concurrent_jobs else 1.0


def servable_pairs(nodes: Iterable[NodeView]) -> set[tuple[str, str]]:
    """The (src, tgt) pairs some online node serves end to end."""
    pairs: set[tuple[str, str]] = set()
    for view in nodes:
        if view.online:
            pairs |= view.capabilities.servable_pairs()
    return pairs


def servable_targets(nodes: Iterable[NodeView], src: str) -> set[str]:
    """The languages some online node translates ``src`` into end to end."""
    return {b for a, b in servable_pairs(nodes) if a == src}
