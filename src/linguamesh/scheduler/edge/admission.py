"""Who may open a socket: origins, connection counts, the handshake deadline.

* ``/ws/node`` is for node programs, never for web pages: a request that carries an
  ``Origin`` header (every browser sends one) is refused.
* ``/ws/session`` accepts requests without ``Origin`` (programs), from the page's own
  origin (``Origin`` matches ``Host``, or the host a trusted proxy forwarded), and from
  ``--allowed-origins``.
* At most ``max_connections`` sockets in all and ``max_connections_per_ip`` per client
  address (behind ``--trusted-proxies``, the address they forwarded); past that a socket
  gets ``rate_limited`` and close 1013 (try again later).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from urllib.parse import urlsplit

from ..config import SchedulerConfig
from .proxies import Client, client_of, parse_networks

#: Close codes (RFC 6455 §7.4.1): policy violation; try again later.
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
#: Close code for sockets of a scheduler that is draining (RFC 6455 "service restart").
SERVICE_RESTART = 1012


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """May a session socket with these ``Origin`` and ``Host`` headers connect?"""
    if origin is None:
        return True  # not a browser
    origin = origin.strip().rstrip("/").lower()
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
        return False
    return parts.netloc == host.strip().lower()


class Admission:
    """Who may open a socket now: connection limits in all and per address, and none
    while the scheduler drains."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.origins = config.origins()
        self.proxies = parse_networks(config.trusted_proxies)
        self.open: Counter[str] = Counter()
        self.total = 0
        #: viewer streams open per session
        self.viewers: Counter[str] = Counter()
        #: shutting down: no new sockets (sessions, resumes, nodes)
        self.draining = False

    def client(self, peer: str, headers: Mapping[str, str]) -> Client:
        """Who the client is (through trusted proxies, ``proxies.py``)."""
        return client_of(peer, headers, self.proxies)

    def enter(self, ip: str) -> str | None:
        """Count a new socket from ``ip``; the reason when it must be refused."""
        if self.draining:
            return "the scheduler is shutting down: connect again in a moment"
        if self.total >= self.config.max_connections:
            return f"the scheduler has {self.total} open sockets (limit {self.config.max_connections})"
        if self.open[ip] >= self.config.max_connections_per_ip:
            return f"{self.open[ip]} sockets are open from {ip} (limit {self.config.max_connections_per_ip})"
        self.open[ip] += 1
        self.total += 1
        return None

    def enter_viewer(self, ip: str, session_id: str) -> str | None:
        """A viewer stream (SSE) from ``ip``: a connection of the address like a socket,
        and at most ``max_viewers_per_session`` per session. The reason when refused."""
        if self.viewers[session_id] >= self.config.max_viewers_per_session:
            return f"session {session_id} has {self.viewers[session_id]} viewers (limit {self.config.max_viewers_per_session})"
        refused = self.enter(ip)
        if refused is None:
            self.viewers[session_id] += 1
        return refused

    def leave_viewer(self, ip: str, session_id: str) -> None:
        self.leave(ip)
        self.viewers[session_id] -= 1
        if self.viewers[session_id] <= 0:
            del self.viewers[session_id]

    def leave(self, ip: str) -> None:
        self.total -= 1
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]
