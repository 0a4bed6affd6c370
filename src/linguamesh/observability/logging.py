"""Structured logging on structlog.

Library code only calls :func:`get_logger` and logs fixed event names with
fields; the CLI calls :func:`configure` once. Context that holds for a whole
connection or task (``session_id``, ``node_id``, ``instance_id``) is bound with
:func:`bind` through contextvars, which asyncio copies per task, so it stays
right under concurrency. Per-job fields are passed explicitly on each record.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

JOB_FIELDS = ("trace_id", "session_id", "job_id", "node_id", "utterance_index", "attempt_id")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    tokens = structlog.contextvars.bind_contextvars(**fields)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def bind(**fields: Any) -> None:
    structlog.contextvars.bind_contextvars(**fields)


def parse_levels(spec: str) -> tuple[int, dict[str, int]]:
    """``info,linguamesh.scheduler=debug`` -> (INFO, {"linguamesh.scheduler": DEBUG})."""
    root = logging.INFO
    per: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, level = part.rpartition("=")
        value = logging.getLevelName(level.upper())
        if not isinstance(value, int):
            raise ValueError(f"unknown log level {level!r} in {spec!r}")
        if name:
            per[name] = value
        else:
            root = value
    return root, per


_NOISY = ("uvicorn.access", "websockets", "asyncio", "httpx", "httpcore")


def configure(
    spec: str = "info",
    *,
    json_file: str | Path | None = None,
    max_bytes: int = 20 * 1024 * 1024,
    backup_count: int = 5,
    console: bool = True,
    json_console: bool = False,
) -> None:
    """Set up logging for a process: console output and optional rotating JSON-lines file."""
    root_level, per = parse_levels(spec)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # drop records below the lowest configured level before any processing;
        # per-module levels are then applied by the stdlib loggers
        wrapper_class=structlog.make_filtering_bound_logger(min([root_level, *per.values()])),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(root_level)
    if console:
        renderer: Any = (
            structlog.processors.JSONRenderer()
            if json_console
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        )
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(
            structlog.stdlib.ProcessorFormatter(processors=[_strip, renderer], foreign_pre_chain=shared)
        )
        root.addHandler(ch)
    if json_file is not None:
        Path(json_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            json_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        fh.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[_strip, structlog.processors.JSONRenderer()], foreign_pre_chain=shared
            )
        )
        root.addHandler(fh)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root_level))
    for name, level in per.items():
        logging.getLogger(name).setLevel(level)


def _strip(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event
