"""The shipped nginx example (``deploy/nginx/linguamesh.conf``) in front of two real
schedulers on a real Redis: speakers through it lose and double nothing and land on both
instances, the speaker page's origin passes, and a forged ``X-Forwarded-For`` is not
believed (the per-address limit counts the real client)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.scheduler.sessions.rooms import room_of
from linguamesh.state import redis_keys as K

from ..conftest import SCALE, free_port, pcm, transcript_lines
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


async def _speak(c: SessionClient, utterances: int, captioned: list[int]) -> list[p.SessionEvent]:
    """Stream ``utterances`` of 2 s in real time; an utterance counts as captioned when a
    draft of it arrived before its end was sent. Returns every event received."""
    from ..integration.test_live_streaming import CHUNK

    events: list[p.SessionEvent] = []

    async def read() -> None:
        while True:
            events.append(await c.recv(None))

    reader = asyncio.create_task(read())
    try:
        seq = 0
        for index in range(utterances):
            for _ in range(round(2.0 / CHUNK)):
                await c.send_chunk(seq, pcm(CHUNK))
                seq += 1
                await asyncio.sleep(CHUNK)
            if any(isinstance(e, p.AsrPartial) and e.utterance_index == index for e in events):
                captioned.append(index)
            await c.send_chunk(seq, b"", is_final=True)
            seq += 1
            await asyncio.sleep(0.3)
        end = asyncio.get_running_loop().time() + 15 * SCALE
        while sum(isinstance(e, p.TranslationResult) for e in events) < utterances:
            assert asyncio.get_running_loop().time() < end, "results missing"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # nothing doubled follows
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
    return events


async def test_ten_speakers_stream_through_nginx_to_two_instances(tmp_path: Path) -> None:
    """Ten speakers streaming in real time through the nginx example, landing on both
    instances, nodes set up as the docs say (each lists every instance): every utterance
    has live captions before its end, and one result. Viewers and transcripts through
    nginx work for every session, whichever instance answers. The instance holding a
    speaker is killed: the speaker resumes on the other, and its room follows."""
    from ..integration.test_web_api import _sse_events

    async with Fleet(tmp_path) as fleet:
        assert fleet.redis is not None
        a = await fleet.scheduler("A", "--trusted-proxies", "127.0.0.1")
        b = await fleet.scheduler("B", "--trusted-proxies", "127.0.0.1")
        fleet.node("n1", [a.url, b.url], delay_ms=20, slots=8)
        fleet.node("n2", [b.url, a.url], delay_ms=20, slots=8)
        for n in ("n1", "n2"):
            await fleet.wait_node("A", n)
            await fleet.wait_node("B", n)
        port = free_port()
        nginx = _nginx(tmp_path, port, [a.port, b.port])
        r = aioredis.Redis.from_url(fleet.redis.url)
        clients: list[SessionClient] = []
        try:
            await _up(port)
            url, http_url = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
            for i in range(10):
                c = SessionClient(url, src="en", tgt="es")
                c.init.room_key = f"key-of-speaker-{i:02d}-secret"
                c.init.room = room_of(c.init.room_key)
                await c.connect()
                clients.append(c)
            captioned: list[list[int]] = [[] for _ in clients]
            spoken = await asyncio.gather(
                *(_speak(c, 3, cap) for c, cap in zip(clients, captioned, strict=True))
            )
            counts = [
                Counter(e.utterance_index for e in evs if isinstance(e, p.TranslationResult))
                for evs in spoken
            ]
            lost = sum(1 for cnt in counts for i in range(3) if cnt[i] == 0)
            duplicated = sum(1 for cnt in counts for n in cnt.values() if n > 1)
            assert (lost, duplicated) == (0, 0)
            assert all(e.status == "ok" for evs in spoken for e in evs if isinstance(e, p.TranslationResult))
            assert captioned == [[0, 1, 2]] * 10  # every utterance: captions before its end
            owners = [(await r.hget(K.session(c.session_id), "owner")).decode() for c in clients]
            assert Counter(owners) == {"A": 5, "B": 5}, owners  # round robin: half on each

            # viewers and transcripts through nginx, whichever instance answers
            async with httpx.AsyncClient(timeout=10) as http:
                for c in clients:
                    assert c.ack is not None
                    token = c.ack.view_token
                    last = int(await r.get(K.seqno(c.session_id)))
                    for _ in range(2):  # round robin: one of the two lands on the other instance
                        stream = f"{http_url}/api/v1/sessions/{c.session_id}/events/stream?token={token}"
                        replay = await _sse_events(stream, 0, stop_after=last)
                        assert [d["utterance_index"] for _, k, d in replay if k == "translation_result"] == [
                            0,
                            1,
                            2,
                        ]
                        txt = await http.get(
                            f"{http_url}/api/v1/sessions/{c.session_id}/transcript",
                            params={"format": "txt", "lang": "es", "token": token},
                        )
                        assert txt.status_code == 200 and len(transcript_lines(txt.text)) == 3
                    room = await http.get(f"{http_url}/api/v1/rooms/{c.init.room}")
                    assert room.json()["session_id"] == c.session_id

                # the instance holding speaker 0 dies: it resumes on the other; its room follows
                victim = clients[owners.index("A")]
                fleet.signal("A", signal.SIGKILL)
                fleet.wait_exit("A", 10)
                await victim.resume()
                assert (await r.hget(K.session(victim.session_id), "owner")).decode() == "B"
                await victim.send_utterance(3, pcm(0.5))
                # worst case: A's death seen (3 s), its orphan given its node's grace (5 s), then run
                (res,) = await victim.results(1, timeout=30 * SCALE)
                assert res.utterance_index == 3 and res.status == "ok"
                room = await http.get(f"{http_url}/api/v1/rooms/{victim.init.room}")
                assert room.status_code == 200 and room.json()["session_id"] == victim.session_id
                txt = await http.get(
                    f"{http_url}/api/v1/sessions/{victim.session_id}/transcript",
                    params={"format": "txt", "lang": "es", "token": victim.ack.view_token},  # type: ignore[union-attr]
                )
                assert len(transcript_lines(txt.text)) == 4
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    await c.disconnect()
            await r.aclose()
            nginx.terminate()
            nginx.wait(10)
