"""``linguamesh healthcheck`` (the image's HEALTHCHECK): healthy when one URL answers 200."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from linguamesh.health import default_urls, probe

from ..procs import run_cli


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_first_url_that_answers_200_wins(server: str) -> None:
    closed = "http://127.0.0.1:9/healthz"  # nothing listens on the discard port
    assert probe([closed, f"{server}/unwell", f"{server}/healthz"], timeout=2) == f"{server}/healthz"
    assert probe([closed, f"{server}/unwell"], timeout=2) is None


def test_the_defaults_follow_the_roles_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINGUAMESH_PORT", "6000")
    monkeypatch.setenv("LINGUAMESH_NODE_METRICS_PORT", "0")
    monkeypatch.delenv("LINGUAMESH_SSL_CERTFILE", raising=False)
    assert default_urls() == ["http://127.0.0.1:6000/healthz"]  # no node port: a scheduler
    monkeypatch.setenv("LINGUAMESH_SSL_CERTFILE", "/etc/tls/cert.pem")
    monkeypatch.setenv("LINGUAMESH_NODE_METRICS_PORT", "9310")
    assert default_urls() == ["https://127.0.0.1:6000/healthz", "http://127.0.0.1:9310/healthz"]


def test_the_command_exits_by_the_answer(server: str) -> None:
    ok = run_cli("healthcheck", f"{server}/healthz")
    assert ok.returncode == 0 and ok.stdout.strip() == f"{server}/healthz"
    bad = run_cli("healthcheck", f"{server}/unwell", "--timeout", "2")
    assert bad.returncode == 1 and "no /healthz answered 200" in bad.stderr
