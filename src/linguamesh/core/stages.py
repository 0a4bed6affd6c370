"""Stage expansion: the stages a job needs, from the request."""

from __future__ import annotations

from dataclasses import dataclass

STAGE_ORDER = ("asr", "repair", "nmt", "tts")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One capability a node must offer to run a stage."""

    stage: str
    langs: tuple[str, ...]


def expand_stages(src: str, tgt: str, *, tts: bool, repair_available: bool) -> tuple[str, ...]:
    """asr(src), repair(src) if any node offers it, nmt(src→tgt) unless src = tgt, tts(tgt)."""
    stages = ["asr"]
    if repair_available:
        stages.append("repair")
    if src != tgt:
        stages.append("nmt")
    if tts:
        stages.append("tts")
    return tuple(stages)


def requirements(stages: tuple[str, ...], src: str, tgt: str) -> tuple[Requirement, ...]:
    out = []
    for stage in stages:
        if stage == "asr" or stage == "repair":
            out.append(Requirement(stage, (src,)))
        elif stage == "nmt":
            out.append(Requirement(stage, (src, tgt)))
        elif stage == "tts":
            out.append(Requirement(stage, (tgt,)))
        else:
            raise ValueError(f"unknown stage {stage!r}")
    return tuple(out)
