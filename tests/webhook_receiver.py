"""A webhook receiver on a free loopback port: what an operator's backend runs. It
records every POST (headers and body) and answers with the statuses it is told to, in
order (then 200); ``hang`` seconds before each answer make it a slow receiver."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def verified(hook: Received, secrets: dict[str, str]) -> dict[str, Any]:
    """What an operator's backend does with a webhook, with PyJWT alone: the token in
    ``Authorization`` verifies with the secret of the key it names, and carries the body's
    SHA-256. Raises on a wrong signature or a changed body."""
    token = hook.headers["authorization"]
    iss = jwt.decode(token, options={"verify_signature": False})["iss"]
    claims = jwt.decode(token, secrets[iss], algorithms=["HS256"], issuer=iss, options={"require": ["exp"]})
    if claims["sha256"] != base64.b64encode(hashlib.sha256(hook.body).digest()).decode():
        raise ValueError("the body does not match the signed hash")
    return hook.event


class WebhookReceiver:
    def __init__(self, statuses: list[int] | None = None, hang: float = 0.0) -> None:
        self.received: list[Received] = []
        self.statuses = list(statuses or [])
        self.hang = hang
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang:
                    time.sleep(receiver.hang)
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.received.append(Received(headers, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def taken(self) -> list[Received]:
        """The webhooks answered 2xx, in the order they came."""
        with self._lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
