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
import os
import re
import secrets
import sys
import weakref
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

JOB_FIELDS = ("trace_id", "session_id", "job_id", "node_id", "utterance_index", "attempt_id")

#: This process's run: every record carries it, so the trace tool tells a restarted
#: process from the one before it (same name, new boot id) and names the restart.
BOOT_ID = secrets.token_hex(6)

#: Fields holding what people said (transcripts, translations, drafts); ``--redact-text``
#: replaces each by its length.
TEXT_FIELDS = frozenset({"text_asr", "text_translated", "text", "translation", "source", "target", "stable"})

#: Fields whose values are secrets: never written to a log.
SECRET_FIELDS = frozenset(
    {"token", "resume_token", "view_token", "node_token", "operator_token", "authorization", "password"}
)
MASK = "***"
#: A secret inside text (an exception, a repr, a URL): ``name=value``, ``name: value``,
#: ``"name": "value"``, ``?token=value``, ``Bearer value``.
_SECRET_TEXT = re.compile(
    r"""(?P<key>(?:\b(?:resume_token|view_token|node_token|operator_token|token|password)\b['"]?\s*[:=]\s*['"]?)"""
    r"""|(?:\bbearer\s+))(?P<value>[^'"\s,;)}\]&]+)""",
    re.IGNORECASE,
)


def mask_text(text: str) -> str:
    """``text`` with every secret value that follows a known name replaced by ``***``."""
    low = text.lower()
    if "token" not in low and "bearer" not in low and "password" not in low:
        return text  # the common case: one C-level scan
    return _SECRET_TEXT.sub(lambda m: m.group("key") + MASK, text)


def mask_secrets(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The last processor before rendering: secret fields are masked, an exception is
    rendered to plain text here (never with local variables) and masked like any text."""
    if event.get("exc_info"):
        event = structlog.processors.format_exc_info(logger, method, event)
    else:
        event.pop("exc_info", None)
    for key, value in event.items():
        if key.lower() in SECRET_FIELDS and value is not None:
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = mask_text(value)
        elif isinstance(value, (dict, list, tuple)):
            event[key] = _mask_nested(value)
    return event


def _mask_nested(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if isinstance(k, str) and k.lower() in SECRET_FIELDS and v is not None
                else _mask_nested(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_nested(v) for v in value)
    return mask_text(value) if isinstance(value, str) else value


class Logger:
    """What :func:`get_logger` returns: structlog's lazy proxy until :func:`configure`
    pins the configured logger's level methods on it. Pinned, a record below the
    level costs one call to structlog's no-op; through the proxy it also costs the
    proxy's lookup of the bound logger, every record (about 1.2 us, paid some fifteen
    times per job on the scheduler's hot path)."""

    LEVELS = ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "msg")

    def __init__(self, name: str) -> None:
        self.name = name
        self._proxy = structlog.get_logger(name)

    def __getattr__(self, attr: str) -> Any:  # only for what is not pinned
        if attr.startswith("_"):  # e.g. ``_proxy`` itself before __init__ set it (copy, pickle)
            raise AttributeError(attr)
        return getattr(self._proxy, attr)

    def pin(self) -> None:
        bound = structlog.get_logger(self.name).bind()  # built with the configuration now
        for level in self.LEVELS:
            method = getattr(bound, level, None)
            if method is not None:
                setattr(self, level, method)

    def unpin(self) -> None:
        for level in self.LEVELS:
            self.__dict__.pop(level, None)
        # a fresh proxy: one that cached its logger under an earlier configuration
        # (cache_logger_on_first_use) would keep that configuration's levels and outputs
        self._proxy = structlog.get_logger(self.name)


#: every logger made, to pin at configure(): weakly, so loggers made on the fly do not pile up
_LOGGERS: weakref.WeakSet[Logger] = weakref.WeakSet()
_PINNED = False


def get_logger(name: str) -> Any:
    logger = Logger(name)
    _LOGGERS.add(logger)
    if _PINNED:
        logger.pin()
    return logger


def _pin_all(pin: bool) -> None:
    global _PINNED
    _PINNED = pin
    for logger in _LOGGERS:
        if pin:
            logger.pin()
        else:
            logger.unpin()


#: fields bound by :class:`bound` (one variable holding a dict: cheap to set and reset)
_BOUND: ContextVar[Mapping[str, Any]] = ContextVar("linguamesh_bound", default=MappingProxyType({}))


class bound:
    """Bind fields to every record logged inside the ``with`` block (in this task).

    Entered for every job event on the scheduler's hot path, so it is a plain class
    over one context variable: about 1 us, where structlog's ``bind_contextvars`` and
    ``reset_contextvars`` (one variable per field) cost about 5 us."""

    __slots__ = ("fields", "token")

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def __enter__(self) -> None:
        outer = _BOUND.get()
        self.token = _BOUND.set({**outer, **self.fields} if outer else self.fields)

    def __exit__(self, *exc: object) -> None:
        _BOUND.reset(self.token)


def _merge_bound(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Fields of the enclosing :class:`bound` blocks; the record's own fields win."""
    for key, value in _BOUND.get().items():
        event.setdefault(key, value)
    return event


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


def error_file_for(json_file: str | Path) -> Path:
    """``sched.log`` -> ``sched.errors.log``: where warnings and errors also go."""
    p = Path(json_file)
    return p.with_name(p.stem + ".errors" + (p.suffix or ".log"))


class _Component:
    """Adds ``component`` (scheduler / node / client) from the logger name, the process's
    ``instance_id`` to scheduler records, and the ``boot_id`` of this process's run to
    every record, so mixed log files stay readable across restarts."""

    def __init__(self, instance_id: str | None) -> None:
        self.instance_id = instance_id

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        name = str(event.get("logger", ""))
        parts = name.split(".")
        if len(parts) > 1 and parts[0] == "linguamesh":
            component = parts[1]
            event.setdefault("component", component)
            if component == "scheduler" and self.instance_id is not None:
                event.setdefault("instance_id", self.instance_id)
            event.setdefault("boot_id", BOOT_ID)
        return event


def redact_text(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """What people said never reaches the log: each text field becomes ``<redacted N chars>``."""
    for key in TEXT_FIELDS.intersection(event):
        value = event[key]
        if isinstance(value, str):
            event[key] = f"<redacted {len(value)} chars>"
    return event


def configure(
    spec: str = "info",
    *,
    json_file: str | Path | None = None,
    error_file: str | Path | None = None,
    max_bytes: int = 20 * 1024 * 1024,
    backup_count: int = 5,
    console: bool = True,
    json_console: bool = False,
    instance_id: str | None = None,
    cache: bool = True,
    redact: bool = False,
) -> None:
    """Set up logging for a process: readable console output, an optional rotating
    JSON-lines file, and a separate rotating file with warnings and errors only
    (next to the JSON file unless ``error_file`` says where). With ``redact``, transcripts
    and translations are replaced by their length."""
    root_level, per = parse_levels(spec)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _merge_bound,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        _Component(instance_id),
        *([redact_text] if redact else []),
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
        cache_logger_on_first_use=cache,
    )
    _pin_all(cache)  # with caching a logger keeps its configuration anyway: skip the proxy
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
            structlog.stdlib.ProcessorFormatter(
                processors=[_strip, mask_secrets, renderer], foreign_pre_chain=shared
            )
        )
        root.addHandler(ch)
    if json_file is not None and error_file is None:
        error_file = error_file_for(json_file)
    for path, level in ((json_file, logging.NOTSET), (error_file, logging.WARNING)):
        if path is None:
            continue
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        fh.setLevel(level)
        fh.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[_strip, mask_secrets, structlog.processors.JSONRenderer(ensure_ascii=False)],
                foreign_pre_chain=shared,
            )
        )
        root.addHandler(fh)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root_level))
    # uvicorn logs every connection at info (and frames at debug, with our job context):
    # our own records say what matters
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root_level))
    _clear_module_levels()  # a level set by an earlier configure() must not linger
    for name, level in per.items():
        logging.getLogger(name).setLevel(level)


def _clear_module_levels() -> None:
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("linguamesh") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.NOTSET)


def reset() -> None:
    """Undo :func:`configure` (tests)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    _clear_module_levels()
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _pin_all(False)


def _strip(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


def process_started(role: str, **fields: Any) -> None:
    """The first record of a process's run (``process.started``, with its ``boot_id``)."""
    from .. import __version__

    log = get_logger(f"linguamesh.{role}")
    log.info("process.started", pid=os.getpid(), version=__version__, **fields)


def process_stopped(role: str, **fields: Any) -> None:
    """The last record of a run that ended by itself (a stop, not a crash or SIGKILL)."""
    log = get_logger(f"linguamesh.{role}")
    log.info("process.stopped", pid=os.getpid(), **fields)
