"""Scheduler settings: defaults, flags and ``LINGUAMESH_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from dataclasses import dataclass, fields

from ..core.lifecycle import LifecycleConfig
from ..protocol import DEFAULT_MAX_MESSAGE_BYTES
from ..state.limits import StoreLimits
from ..state.redis_sentinel import SentinelConfig, parse_sentinels


def default_instance_id() -> str:
    """Unique per process: the host name and a random suffix (two instances never share one)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "scheduler"
    return f"{host}-{secrets.token_hex(3)}"


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(raw: str | float) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    if isinstance(raw, int | float):
        return float(raw)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", raw.lower())
    if m is None:
        raise ValueError(f"{raw!r} is not a duration (e.g. 3600, 90m, 24h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    host: str = "127.0.0.1"
    port: int = 5010
    #: Unique among live instances on Redis (a second one under the same id refuses to
    #: start). Unset: the host name and a random suffix on Redis; ``local`` alone.
    instance_id: str = ""
    pending_timeout: float = 10.0
    ack_timeout: float = 5.0
    result_timeout: float = 30.0
    max_attempts: int = 3
    session_linger: float = 120.0
    heartbeat_interval: float = 5.0
    #: A node that sends nothing for this many heartbeat intervals is dropped.
    heartbeat_misses: float = 3.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_utterance_seconds: float = 30.0
    chunk_idle_gap: float = 1.0
    #: Streamed audio goes to a streaming node as it arrives (the job starts at the first
    #: ``audio_chunk``); off: buffered until the utterance ends, as in v1.
    streaming: bool = True
    #: Server-side end of speech: the default trailing silence that ends an utterance.
    end_of_speech_ms: int = 500
    #: The replay window of a session: its newest events, for a client that reconnects
    #: (older results come back from the transcript, without speech).
    history_size: int = 1000
    history_bytes: int = 8 * 1024 * 1024
    #: Seconds a session's transcript is kept after the session ended (``--transcript-retention``).
    transcript_retention: float = 24 * 3600.0
    selector: str = "pooled"
    node_token: str | None = None
    #: A file of ``node_id token`` lines: each node's own credential (see ``credentials.py``).
    node_tokens: str | None = None
    #: Allow a non-loopback bind address without node credentials (logged as a warning).
    insecure: bool = False
    operator_token: str | None = None
    #: A file of operator tokens, one per line (each accepted; read again on SIGHUP).
    operator_token_file: str | None = None
    #: Serve ``/metrics`` without the operator token when bound off loopback.
    metrics_public: bool = False
    #: Origins (``scheme://host[:port]``, comma-separated) allowed on ``/ws/session``
    #: besides the page's own; ``*`` allows any.
    allowed_origins: str = ""
    #: Reverse proxies whose forwarding headers are believed (comma-separated addresses or
    #: CIDR networks); none by default: the socket's peer is the client.
    trusted_proxies: str = ""
    #: Seconds a new socket may take to send ``session_init`` / ``node_register``.
    handshake_timeout: float = 10.0
    #: Seconds an HTTP connection may take to send a whole request head (slowloris, idle).
    request_head_timeout: float = 30.0
    #: Seconds a fragmented WebSocket message may take from its first frame to its last.
    ws_fragment_deadline: float = 10.0
    #: A viewer (SSE) that has not taken a write within this many seconds is closed; the
    #: events that may wait for one viewer, in bytes, before it is dropped as too slow.
    viewer_write_deadline: float = 30.0
    #: Seconds between ``heartbeat`` events on a quiet viewer stream (a page that hears none
    #: for twice this long knows its connection is gone, though the socket looks open).
    viewer_heartbeat: float = 5.0
    viewer_queue_bytes: int = 4 * 1024 * 1024
    #: Open sockets (sessions and nodes), in all and per client address.
    max_connections: int = 10_000
    max_connections_per_ip: int = 200
    #: Sessions held per client address (alive or lingering after their socket), and new
    #: sessions a second per address (with a burst).
    max_sessions_per_ip: int = 100
    ip_sessions_per_s: float = 5.0
    ip_session_burst: float = 60.0
    #: Viewer streams (SSE) of one session; each also counts as a connection of its address.
    max_viewers_per_session: int = 1000
    #: A file of API keys (``KEY_ID SECRET [name=value ...]``): sessions and viewers then
    #: need an access token signed with one (``edge/access_tokens.py``).
    api_keys: str | None = None
    #: Where session_started / session_ended webhooks are posted, signed with the keys'
    #: secrets (``webhooks.py``); needs ``api_keys``.
    webhook_url: str | None = None
    #: Bound off loopback without ``api_keys``: start anyway, anyone may open sessions.
    allow_anonymous: bool = False
    #: Megabytes of events the process may hold for clients (windows and transcripts in
    #: memory, sockets' backlogs, viewers' queues); past it new work is ``overloaded``.
    memory_budget_mb: int = 2048
    #: Milliseconds the event loop may fall behind (the median of 5 ticks) before new work is refused
    #: with ``overloaded``, until it is back under a quarter of that (``core/overload.py``);
    #: 0 turns it off.
    overload_lag_ms: int = 200
    #: Target languages a session may ask for (each is a job per utterance).
    max_targets: int = 4
    #: Token buckets on intake: jobs (an utterance per target language) per second and seconds of audio per second,
    #: with a burst, per session and per client address.
    session_utterances_per_s: float = 10.0
    session_utterance_burst: float = 30.0
    session_audio_per_s: float = 4.0
    session_audio_burst: float = 180.0
    ip_utterances_per_s: float = 50.0
    ip_utterance_burst: float = 150.0
    ip_audio_per_s: float = 20.0
    ip_audio_burst: float = 900.0
    #: Largest ``max_concurrent_jobs`` a node may announce, and most entries in one
    #: capability list.
    max_node_slots: int = 1024
    max_capability_entries: int = 2000
    #: Bytes of events that may wait for one client's socket; past it the client is cut
    #: (close 4008) and resumes to get the rest from the history.
    max_client_backlog_bytes: int = 16 * 1024 * 1024
    #: Seconds a SIGTERM waits for jobs in flight to deliver before the process exits.
    drain_timeout: float = 30.0
    #: Milliseconds clients and nodes are told to wait before they reconnect (``reconnect``).
    reconnect_delay_ms: int = 1000
    #: Where clients and nodes should reconnect (e.g. the load balancer); unset: the same address.
    reconnect_url: str | None = None
    #: Seconds an instance may stay dead before its id and inbox are pruned from Redis.
    dead_instance_retention: float = 3600.0
    #: TLS: the server's certificate (chain) and key, PEM; then it serves https:// and wss://.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: Shared state for many instances (``redis://host:6379/0``); in memory when unset.
    redis_url: str | None = None
    #: Sentinels (``host:port,...``) that name the master of ``redis_service``: every
    #: connection follows a failover (``redis_url`` then gives password, db and TLS only).
    redis_sentinels: str = ""
    redis_service: str = "mymaster"
    #: The Sentinels' own password, if they have one.
    redis_sentinel_password: str | None = None
    #: Replicas that must confirm each hot-path write before it is acted on (``WAIT``);
    #: -1: 1 with Sentinels (a failover then loses nothing acknowledged), else 0.
    redis_replicas: int = -1
    #: Milliseconds a write waits for that confirmation; past it the write goes on
    #: unreplicated (the replica is away: logged once, ``linguamesh_redis_unreplicated_total``).
    redis_wait_ms: int = 100

    def __post_init__(self) -> None:
        if not self.instance_id:
            object.__setattr__(self, "instance_id", default_instance_id() if self.shared_state else "local")

    @property
    def shared_state(self) -> bool:
        """State in Redis (shared with other instances), not in this process's memory."""
        return self.redis_url is not None or bool(self.redis_sentinels)

    def sentinel(self) -> SentinelConfig | None:
        if not self.redis_sentinels:
            return None
        return SentinelConfig(
            parse_sentinels(self.redis_sentinels), self.redis_service, self.redis_sentinel_password
        )

    def replicas_to_confirm(self) -> int:
        if self.redis_replicas >= 0:
            return self.redis_replicas
        return 1 if self.redis_sentinels else 0

    def lifecycle(self) -> LifecycleConfig:
        return LifecycleConfig(
            pending_timeout=self.pending_timeout,
            ack_timeout=self.ack_timeout,
            result_timeout=self.result_timeout,
            max_attempts=self.max_attempts,
        )

    @classmethod
    def from_env(cls, **overrides: object) -> SchedulerConfig:
        """Defaults, then ``LINGUAMESH_<FIELD>`` variables, then explicit overrides (flags)."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(f"LINGUAMESH_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(cls(), f.name))
            try:
                if f.name in _DURATIONS:
                    values[f.name] = parse_duration(raw)
                    continue
                if kind is bool:
                    values[f.name] = _flag(f.name, raw)
                    continue
                values[f.name] = kind(raw) if kind is not type(None) else raw
            except ValueError:
                raise ValueError(
                    f"LINGUAMESH_{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)  # type: ignore[arg-type]
        cfg.validate()
        return cfg

    @property
    def exposed(self) -> bool:
        """Bound to an address other hosts can reach."""
        return not is_loopback(self.host)

    def validate(self) -> None:
        from .edge.credentials import NodeCredentials

        NodeCredentials.load(self.node_token, self.node_tokens)  # a bad file fails here, at start
        from .edge.proxies import parse_networks

        parse_networks(self.trusted_proxies)  # a bad network fails here, at start
        from .edge.access_tokens import ApiKeys

        ApiKeys.load(self.api_keys)  # a bad keys file fails here, at start
        from .edge.operator_tokens import operator_tokens

        operator_tokens(self.operator_token, self.operator_token_file)  # and a bad operator token file
        if self.exposed and self.node_token is None and self.node_tokens is None and not self.insecure:
            raise ValueError(
                f"bound to {self.host}, which other hosts can reach, with no node credentials: any "
                "program could register as a node and receive users' audio. Set --node-token or "
                "--node-tokens FILE, or pass --insecure to run like this anyway"
            )
        if self.exposed and self.api_keys is None and not self.allow_anonymous:
            raise ValueError(
                f"bound to {self.host}, which other hosts can reach, with no API keys: anyone could open "
                "sessions and spend the nodes' time. Set --api-keys FILE (speakers and viewers then need "
                "access tokens), or pass --allow-anonymous to run like this anyway"
            )
        if self.webhook_url is not None:
            if self.api_keys is None:
                raise ValueError(
                    "--webhook-url needs --api-keys: webhooks are about the sessions of API keys and "
                    "are signed with their secrets"
                )
            if not re.match(r"https?://[^/\s]+", self.webhook_url):
                raise ValueError(f"--webhook-url {self.webhook_url!r}: an http:// or https:// URL is needed")
        for name in (
            "pending_timeout",
            "ack_timeout",
            "result_timeout",
            "heartbeat_interval",
            "handshake_timeout",
            "viewer_heartbeat",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.selector not in ("pooled", "flat"):
            raise ValueError("selector must be 'pooled' or 'flat'")
        for name in ("max_connections", "max_connections_per_ip", "max_node_slots", "max_capability_entries",
                     "max_targets", "max_sessions_per_ip", "max_viewers_per_session",
                     "memory_budget_mb"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.overload_lag_ms < 0:
            raise ValueError("overload_lag_ms must not be negative (0 turns it off)")
        self.sentinel()  # bad Sentinel addresses fail here, at start
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both --ssl-certfile and --ssl-keyfile")
        for name in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"--{name.replace('_', '-')} {path}: not a readable file")
        if self.redis_wait_ms < 1 or self.redis_wait_ms > 1500:
            raise ValueError("redis_wait_ms must be 1-1500 (below the Redis call timeout)")
        if self.history_size < 1 or self.history_bytes < 1024:
            raise ValueError("history_size must be at least 1 and history_bytes at least 1024")
        if self.transcript_retention < 1:
            raise ValueError("transcript_retention must be at least 1 second")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.instance_id):
            raise ValueError("instance_id: 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'")

    def store_limits(self) -> StoreLimits:
        return StoreLimits(self.history_size, self.history_bytes, self.transcript_retention)

    def origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip())


_DURATIONS = frozenset({"transcript_retention"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"LINGUAMESH_{name.upper()}={raw!r} is not a valid bool (true/false)")
