"""TLS for the WebSocket clients (nodes, the Python client): ``wss://`` URLs are checked
against the system's certificate authorities, or against ``ca_file`` (a PEM bundle) for a
private one. The scheduler terminates TLS itself with ``--ssl-certfile``/``--ssl-keyfile``."""

from __future__ import annotations

import ssl


def client_context(url: str, ca_file: str | None) -> ssl.SSLContext | None:
    """The context for connecting to ``url``: None for ``ws://`` (plain)."""
    if not url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=ca_file)  # hostname checked, TLS 1.2 at least
    return ctx
