"""TLS end to end: a scheduler process serving https:// and wss:// with a certificate
made here by a private CA (openssl), a node and a client that trust that CA."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets

from linguamesh.client import SessionClient
from linguamesh.scheduler.config import SchedulerConfig

from ..conftest import SCALE, free_port, pcm
from ..procs import launch, node_config


def make_certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for localhost and 127.0.0.1: (ca, cert, key)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=LinguaMesh test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (tmp / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"


async def test_a_scheduler_serves_tls_to_nodes_clients_and_pages(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    port = free_port()
    sched = launch("scheduler", "--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                   log=tmp_path / "s.log")  # fmt: skip
    node = launch("node", "--scheduler", f"wss://localhost:{port}", "--ca-file", str(ca),
                  "--config", str(node_config(tmp_path, "n-tls")), log=tmp_path / "n.log")  # fmt: skip
    try:
        trusted = ssl.create_default_context(cafile=str(ca))
        async with httpx.AsyncClient(verify=trusted, timeout=5) as http:
            for _ in range(int(200 * SCALE)):
                try:
                    nodes = (await http.get(f"https://localhost:{port}/api/v1/nodes")).json()["nodes"]
                    if any(n["node_id"] == "n-tls" for n in nodes):
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                assert sched.proc.poll() is None, "the scheduler exited"
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the node never registered over wss://")
            page = await http.get(f"https://localhost:{port}/")
            assert page.status_code == 200 and "LinguaMesh" in page.text
        async with SessionClient(f"wss://localhost:{port}", src="en", tgt="es", ca_file=str(ca)) as c:
            await c.send_utterance(0, pcm(0.2))
            assert (await c.next_result(15 * SCALE)).status == "ok"
        # a client that does not trust the CA is refused by its own TLS check
        with pytest.raises(ssl.SSLCertVerificationError):
            await SessionClient(f"wss://localhost:{port}", src="en", tgt="es").connect()
        # plain ws:// to the TLS port gets no WebSocket
        with pytest.raises((websockets.exceptions.InvalidMessage, OSError, EOFError)):
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/session", open_timeout=5):
                pass
    finally:
        node.stop()
        sched.stop()


def test_tls_needs_both_files_and_readable_ones(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ValueError, match="both --ssl-certfile and --ssl-keyfile"):
        SchedulerConfig.from_env(ssl_certfile=str(cert))
    with pytest.raises(ValueError, match="not a readable file"):
        SchedulerConfig.from_env(ssl_certfile=str(cert), ssl_keyfile=str(tmp_path / "missing.key"))
