"""``linguamesh models list|check|preload``: what a node can serve, and why not."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ..engines.registry import EngineSet, build


def report(configs: list[dict[str, Any]], *, load: bool) -> tuple[EngineSet, Table]:
    engines = build(configs, preload=load)
    table = Table(title="engines", show_lines=False)
    for col in ("#", "kind", "engine", "serves", "status"):
        table.add_column(col)
    failed = {f.index: f for f in engines.failures}
    loaded = set(engines.models_manager.loaded())
    built = iter(engines.all())
    for i, cfg in enumerate(configs):
        kind = str(cfg.get("kind"))
        if i in failed:
            table.add_row(str(i), kind, "-", "-", f"[red]unavailable:[/red] {failed[i].error}")
            continue
        engine = next(built)
        serves = _serves(engine)
        key = getattr(engine, "key", None)
        status = "[green]loaded[/green]" if key in loaded else ("ok" if not load else "[green]ready[/green]")
        table.add_row(str(i), kind, engine.name, serves, status)
    return engines, table


def _serves(engine: Any) -> str:
    if hasattr(engine, "pairs"):
        return ", ".join(f"{a}→{b}" for a, b in sorted(engine.pairs()))
    if hasattr(engine, "languages"):
        langs = sorted(engine.languages())
        return ", ".join(langs) if len(langs) <= 8 else f"{', '.join(langs[:8])} … ({len(langs)})"
    return "all"


def run(command: str, configs: list[dict[str, Any]], console: Console) -> int:
    engines, table = report(configs, load=command in ("check", "preload"))
    try:
        console.print(table)
        caps = engines.capabilities()
        pairs = sorted(
            (a, b) for a, b in caps.nmt_pairs if a in caps.asr_languages and b in caps.tts_languages
        )
        console.print(
            "speech-to-speech pairs: "
            + (", ".join(f"{a}→{b}" for a, b in pairs) if pairs else "[red]none[/red]")
        )
        if command != "list":
            for key, st in engines.models_manager.snapshot().items():
                if st["loads"]:
                    console.print(f"  {key}: loaded in {st['load_seconds']:.2f}s")
        return 1 if engines.failures and command == "check" else 0
    finally:
        engines.close()
