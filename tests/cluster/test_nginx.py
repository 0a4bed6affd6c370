"""The shipped nginx example (``deploy/nginx/linguamesh.conf``) in front of two real
schedulers on a real Redis: speakers through it lose and double nothing and land on both
instances, the speaker page's origin passes, and a forged ``X-Forwarded-For`` is not
believed (the per-address limit counts the real client)."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p

from ..conftest import SCALE, free_port
from ..fleet import Fleet, Speaker, finish
from ..procs import die_with_parent

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "linguamesh.conf"
INIT = '{"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "es"}'


def _nginx(tmp: Path, port: int, upstreams: list[int]) -> subprocess.Popen[bytes]:
    """The example with this test's ports, inside a minimal main config of its own."""
    site = EXAMPLE.read_text()
    site = re.sub(r"server 127\.0\.0\.1:5010;\n\s*server 127\.0\.0\.1:5011;",
                  "\n".join(f"server 127.0.0.1:{u};" for u in upstreams), site)  # fmt: skip
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (tmp / "site.conf").write_text(site)
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    (tmp / "nginx.conf").write_text(
        f"worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
        "events { worker_connections 512; }\n"
        "http {\n  access_log off;\n"
        f"  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n"
        f"  fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n"
        f"  include {tmp}/site.conf;\n}}\n"
    )
    test = subprocess.run(["nginx", "-t", "-p", str(tmp), "-c", str(tmp / "nginx.conf")], capture_output=True)
    assert test.returncode == 0, test.stderr.decode()
    return subprocess.Popen(
        ["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off; user root;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )


async def _up(port: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(int(10 * SCALE / 0.05)):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError("nginx did not answer")


async def _open(
    url: str, headers: dict[str, str], origin: str | None = None
) -> tuple[object, p.SessionEvent]:
    ws = await connect(url + "/ws/session", additional_headers=headers, origin=origin)  # type: ignore[arg-type]
    try:
        await ws.send(INIT)
    except ConnectionClosed:
        pass
    return ws, p.decode_event(await ws.recv())


async def test_two_schedulers_behind_the_shipped_nginx_example(tmp_path: Path) -> None:
    async with Fleet(tmp_path) as fleet:
        flags = ("--trusted-proxies", "127.0.0.1", "--max-connections-per-ip", "3")
        a = await fleet.scheduler("A", *flags)
        b = await fleet.scheduler("B", *flags)
        fleet.node("n1", [a.url, b.url], delay_ms=20)
        await fleet.wait_node("A", "n1")
        port = free_port()
        nginx = _nginx(tmp_path, port, [a.port, b.port])
        try:
            await _up(port)
            url = f"ws://127.0.0.1:{port}"
            speakers = [Speaker([url], f"s{i}") for i in range(4)]
            for s in speakers:
                await s.start()
            for _ in range(5):
                for s in speakers:
                    await s.say()
            t = await finish(speakers, 30 * SCALE)
            assert (t.ok, t.lost, t.duplicated) == (20, 0, 0), t.line()
            logs = {name: (tmp_path / f"{name}.1.log").read_text() for name in ("A", "B")}
            assert all("session.created" in text for text in logs.values())  # round robin: both serve

            # the speaker page's own origin passes: nginx forwards the host and port it used
            ws, ack = await _open(url, {}, origin=f"http://127.0.0.1:{port}")
            assert isinstance(ack, p.SessionInitAck)
            await ws.close()  # type: ignore[attr-defined]

            # forged addresses are not believed: every socket counts for the real client
            # (127.0.0.1), at most 3 per instance, so of 8 at least 2 are refused
            opened = [await _open(url, {"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(8)]
            refused = [ev for _, ev in opened if isinstance(ev, p.Error)]
            assert len(refused) >= 2 and all(ev.code == "rate_limited" for ev in refused)  # type: ignore[union-attr]
            for ws, _ in opened:
                await ws.close()  # type: ignore[attr-defined]
        finally:
            nginx.terminate()
            nginx.wait(10)
