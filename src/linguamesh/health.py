"""``linguamesh healthcheck``: is the scheduler or node of this container alive?

One image runs either role, so the check tries the scheduler's ``/healthz`` and the
node's, on loopback, and is healthy when one answers 200. A scheduler that terminates
TLS answers on ``https://``; its certificate names the public host, not 127.0.0.1, so
this local probe does not check it (it checks liveness, not identity).
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request


def default_urls() -> list[str]:
    port = os.environ.get("LINGUAMESH_PORT", "5010")
    scheme = "https" if os.environ.get("LINGUAMESH_SSL_CERTFILE") else "http"
    node_port = os.environ.get("LINGUAMESH_NODE_METRICS_PORT", "9310")
    urls = [f"{scheme}://127.0.0.1:{port}/healthz"]
    if node_port not in ("", "0"):
        urls.append(f"http://127.0.0.1:{node_port}/healthz")
    return urls


def probe(urls: list[str] | None = None, timeout: float = 3.0) -> str | None:
    """The first URL that answers 200, or None."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    for url in urls or default_urls():
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=unverified) as resp:
                if resp.status == 200:
                    return url
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return None
