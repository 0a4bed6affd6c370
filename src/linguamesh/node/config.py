"""Node settings from a TOML file, flags and ``LINGUAMESH_NODE_*`` variables."""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class NodeConfig:
    scheduler_urls: list[str] = field(default_factory=lambda: ["ws://127.0.0.1:5010"])
    node_id: str = field(default_factory=lambda: f"node-{socket.gethostname()}")
    token: str | None = None
    #: A PEM bundle of the certificate authorities a ``wss://`` scheduler's certificate is
    #: checked against (a private CA); unset: the system's.
    ca_file: str | None = None
    max_concurrent_jobs: int = 2
    engines: list[dict[str, Any]] = field(default_factory=list)
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    #: Results kept for a scheduler that has not acknowledged them.
    max_unacked_results: int = 1000
    #: Model manager: ``memory_limit_mb`` (host memory, LRU eviction above it),
    #: ``gpu_memory_limit_mb`` (per GPU, measured on the device), ``preload`` (load all at start).
    models: dict[str, Any] = field(default_factory=dict)
    #: The node's HTTP port for /healthz, /readyz and /metrics (0 = off; 9310 in the examples:
    #: node_exporter has 9100), and the address it binds (loopback unless told: a probe or
    #: Prometheus on another host or pod needs ``0.0.0.0``).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    #: On SIGTERM: seconds to finish running jobs and get their results acked before exiting.
    drain_timeout: float = 30.0
    #: Take streaming jobs (audio forwarded while the person speaks; live captions).
    streaming: bool = True

    @classmethod
    def load(cls, path: str | Path | None, **overrides: Any) -> NodeConfig:
        data: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            try:
                data = tomllib.loads(p.read_text())
            except FileNotFoundError:
                raise ValueError(f"node config {p} does not exist") from None
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"node config {p} is not valid TOML: {exc}") from None
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown node config keys: {', '.join(sorted(unknown))}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**data)
        if cfg.max_concurrent_jobs < 1:
            raise ValueError("max_concurrent_jobs must be at least 1")
        if not cfg.scheduler_urls:
            raise ValueError("at least one scheduler URL is needed")
        return cfg
