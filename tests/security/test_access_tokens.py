"""Access tokens against a real scheduler process: tokens minted here with PyJWT,
independently of the project's own minting; keys rotated by SIGHUP."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from linguamesh import protocol as p
from linguamesh.client import ClientError, SessionClient
from linguamesh.scheduler.sessions.rooms import room_of

from ..conftest import SCALE, pcm
from ..fleet import Fleet
from ..procs import cli

S1, S2, S3 = ("secret-one-" + "1" * 32, "secret-two-" + "2" * 32, "secret-three-" + "3" * 32)


def token(iss: str, secret: str, grants: dict[str, Any] | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": iss, "sub": "alice", "exp": now + 600, "grants": grants or {"speak": True, "view": True}}
    body.update(claims)
    return jwt.encode(body, secret, algorithm="HS256")


async def refused(url: str, tok: str | None, **init: Any) -> str:
    c = SessionClient(url, src="en", tgt="es")
    c.init.token = tok
    for k, v in init.items():
        setattr(c.init, k, v)
    with pytest.raises(ClientError) as err:
        await c.connect()
    return f"{err.value.code}: {err.value.message}"


async def test_speakers_and_viewers_need_tokens_that_grant_them(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# the operator's keys\nk1 {S1} max_targets=2\nk2 {S2}\n")
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("A", "--api-keys", str(keys))
        fleet.node("n1", [s.url], delay_ms=0)
        await fleet.wait_node("A", "n1")
        now = int(time.time())
        unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        body = base64.urlsafe_b64encode(
            json.dumps({"iss": "k1", "exp": now + 600, "grants": {"speak": True}}).encode()
        )
        cases = {
            "no token": None,
            "expired": token("k1", S1, exp=now - 120),
            "not yet valid": token("k1", S1, nbf=now + 300),
            "bad signature": token("k1", S1)[:-4] + "AAAA",
            "unknown iss": token("k9", S1),
            "alg none": f"{unsigned}.{body.rstrip(b'=').decode()}.",
            "another key's secret": token("k1", S2),
            "speak false": token("k1", S1, {"speak": False, "view": True}),
            "no exp": jwt.encode({"iss": "k1", "grants": {"speak": True}}, S1, algorithm="HS256"),
        }
        for name, tok in cases.items():
            answer = await refused(s.url, tok)
            assert answer.startswith("unauthorized"), (name, answer)
        key = "room-key-0123456789"
        answer = await refused(s.url, token("k1", S1, {"speak": True, "room": "other-room-0123456789x"}),
                               room=room_of(key), room_key=key)  # fmt: skip
        assert answer.startswith("unauthorized") and "room" in answer
        answer = await refused(s.url, token("k1", S1, {"speak": True, "langs": ["en", "fr"]}))
        assert answer.startswith("unauthorized") and "es" in answer
        answer = await refused(s.url, token("k1", S1), extra_tgt_langs=["fr", "de"])
        assert answer.startswith("quota_exceeded"), answer  # k1 allows 2 targets


async def test_a_valid_token_opens_a_session_viewers_use_theirs_and_keys_rotate_on_sighup(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {S1}\nk2 {S2}\n")
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("A", "--api-keys", str(keys))
        fleet.node("n1", [s.url], delay_ms=0)
        await fleet.wait_node("A", "n1")
        room_key = "speaker-room-key-0123"
        room = room_of(room_key)
        speaker = SessionClient(s.url, src="en", tgt="es")
        speaker.init.token = token("k1", S1, {"speak": True, "view": True, "room": room})
        speaker.init.room, speaker.init.room_key = room, room_key
        await speaker.connect()
        await speaker.send_utterance(0, pcm(0.1))
        assert (await speaker.next_result(10 * SCALE)).status == "ok"
        log = (tmp_path / "A.1.log").read_text()
        created = next(json.loads(x) for x in log.splitlines() if '"session.created"' in x)
        assert created["identity"] == "alice" and created["key_id"] == "k1"

        async with httpx.AsyncClient(timeout=5) as http:
            viewer = token("k2", S2, {"view": True, "room": room})
            stranger = token("k2", S2, {"view": True, "room": "another-room-0123456789"})
            no_view = token("k2", S2, {"speak": True})
            # the room hands its view token only to a viewer whose token grants the room
            assert (await http.get(f"{s.http}/api/v1/rooms/{room}")).status_code == 401
            assert (
                await http.get(f"{s.http}/api/v1/rooms/{room}", params={"access_token": stranger})
            ).status_code == 401
            assert (
                await http.get(f"{s.http}/api/v1/rooms/{room}", params={"access_token": no_view})
            ).status_code == 401
            shown = await http.get(f"{s.http}/api/v1/rooms/{room}", params={"access_token": viewer})
            assert shown.status_code == 200 and shown.json()["session_id"] == speaker.session_id
            base = f"{s.http}/api/v1/sessions/{speaker.session_id}"
            txt = await http.get(
                f"{base}/transcript", params={"format": "txt", "lang": "en", "access_token": viewer}
            )
            assert txt.status_code == 200 and txt.text.strip()
            bearer = await http.get(f"{base}/events", headers={"Authorization": f"Bearer {viewer}"})
            assert bearer.status_code == 200
            assert (await http.get(f"{base}/events", params={"access_token": stranger})).status_code == 401

            # the CLI's token is accepted
            out = subprocess.run(
                cli("token", "--api-keys", str(keys), "--key", "k2", "--identity", "bob", "--ttl", "600"),
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            minted = out.stdout.strip().splitlines()[-1]
            bob = SessionClient(s.url, src="en", tgt="es")
            bob.init.token = minted
            await bob.connect()
            await bob.disconnect()

            # rotation: k3 added, k1 removed; SIGHUP; the open session goes on
            keys.write_text(f"k2 {S2}\nk3 {S3}\n")
            fleet.signal("A", signal.SIGHUP)
            await asyncio.sleep(1.0)
            assert fleet.schedulers["A"].proc is not None and fleet.schedulers["A"].proc.proc.poll() is None
            assert "scheduler.reloaded" in (tmp_path / "A.1.log").read_text()
            assert (await refused(s.url, token("k1", S1))).startswith("unauthorized")
            fresh = SessionClient(s.url, src="en", tgt="es")
            fresh.init.token = token("k3", S3)
            await fresh.connect()
            await fresh.disconnect()
            await speaker.send_utterance(1, pcm(0.1))  # opened with k1: stays open
            assert (await speaker.next_result(10 * SCALE)).status == "ok"
            # a bad file changes nothing (and says why)
            keys.write_text("k4 short\n")
            reload = await http.post(f"{s.http}/api/v1/admin/reload")
            assert reload.status_code == 400 and "shorter than 32" in reload.json()["error"]["message"]
            fresh = SessionClient(s.url, src="en", tgt="es")
            fresh.init.token = token("k3", S3)
            await fresh.connect()
            await fresh.disconnect()
        await speaker.disconnect()


def test_a_scheduler_bound_off_loopback_without_api_keys_refuses_to_start() -> None:
    out = subprocess.run(
        cli("scheduler", "--port", "1", "--host", "0.0.0.0", "--node-token", "nodes-token-0123"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "--api-keys" in out.stderr and "--allow-anonymous" in out.stderr, out.stderr


async def test_key_quotas_sessions_and_audio_per_hour_and_usage(tmp_path: Path) -> None:
    """A key's concurrent sessions (the second refused, free again once the first closed),
    its audio seconds per hour (the utterance past it refused, naming it) and its usage."""
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {S1} max_sessions=1 audio_seconds_per_hour=1\n")
    async with Fleet(tmp_path, redis=True) as fleet:
        s = await fleet.scheduler("A", "--api-keys", str(keys))
        fleet.node("n1", [s.url], delay_ms=0)
        await fleet.wait_node("A", "n1")
        first = SessionClient(s.url, src="en", tgt="es")
        first.init.token = token("k1", S1)
        await first.connect()
        assert (await refused(s.url, token("k1", S1))).startswith("quota_exceeded")
        await first.send_utterance(0, pcm(0.6))
        done = await first.next_result(10 * SCALE)
        assert done.status == "ok"
        async with httpx.AsyncClient(timeout=5) as http:  # the job says who spoke it
            job = (await http.get(f"{s.http}/api/v1/jobs/{done.job_id}")).json()
        assert job["identity"] == "alice" and job["key_id"] == "k1"
        await first.send_utterance(1, pcm(0.6))  # 1.2 s: past the hour's 1 s
        err = await first.recv(5 * SCALE)
        assert isinstance(err, p.Error) and err.code == "quota_exceeded" and err.ref == "utterance 1", err
        await first.close_session()
        await asyncio.sleep(0.5)
        second = SessionClient(s.url, src="en", tgt="es")
        second.init.token = token("k1", S1)
        await second.connect()  # the first closed: its place is free
        await second.disconnect()
        async with httpx.AsyncClient(timeout=5) as http:
            usage = (await http.get(f"{s.http}/api/v1/usage")).json()["keys"]["k1"]
        assert usage["sessions"] == 2 and usage["utterances"] == 1 and usage["jobs"] == 1
        assert abs(usage["audio_seconds"] - 0.6) < 0.01
        async with httpx.AsyncClient(timeout=5) as http:
            metrics = (await http.get(f"{s.http}/metrics")).text
        assert 'linguamesh_key_usage_total{key="k1",kind="utterances"} 1.0' in metrics, metrics[-2000:]
        assert 'linguamesh_quota_refused_total{key="k1"} 2.0' in metrics


async def test_a_refused_session_init_holds_no_place_among_its_keys_sessions(tmp_path: Path) -> None:
    """A key allows one session: a session_init refused for its room (not its key's) leaves
    the key's place free for the next."""
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {S1} max_sessions=1\n")
    async with Fleet(tmp_path, redis=False) as fleet:
        s = await fleet.scheduler("A", "--api-keys", str(keys))
        answer = await refused(s.url, token("k1", S1), room="a" * 22, room_key="the-wrong-key-0123456789")
        assert answer.startswith("bad_message") and "room" in answer
        c = SessionClient(s.url, src="en", tgt="es")
        c.init.token = token("k1", S1)
        await c.connect()  # the refused one holds no place
        await c.disconnect()


async def test_rotation_by_sighup_under_load_loses_nothing(tmp_path: Path) -> None:
    """Two instances on Redis under steady load rotate their API keys, node tokens and
    operator tokens by SIGHUP, twice (add the new, then remove the old): the sessions
    already open speak on and every utterance gets exactly one result (0 lost, 0
    duplicated); a new key admits sessions at once, a removed one no new session; an
    added node token lets its node in; the operator tokens follow the file."""
    keys, nodes, operators = tmp_path / "keys", tmp_path / "node-tokens", tmp_path / "operator-tokens"
    keys.write_text(f"k1 {S1}\n")
    nodes.write_text("n1 node-one-token-0123456789\nn2 node-two-token-0123456789\n")
    op_old, op_new = "operator-old-0123456789", "operator-new-0123456789"
    operators.write_text(f"{op_old}\n")
    flags = ("--api-keys", str(keys), "--node-tokens", str(nodes), "--operator-token-file", str(operators))
    async with Fleet(tmp_path, redis=True) as fleet:
        a = await fleet.scheduler("A", *flags)
        b = await fleet.scheduler("B", *flags)
        fleet.node("n1", [a.url], delay_ms=50, env={"LINGUAMESH_NODE_TOKEN": "node-one-token-0123456789"})
        fleet.node("n2", [b.url], delay_ms=50, env={"LINGUAMESH_NODE_TOKEN": "node-two-token-0123456789"})
        await fleet.wait_node("A", "n1", operator_token=op_old)
        await fleet.wait_node("B", "n2", operator_token=op_old)
        utterances = 30
        speakers: list[SessionClient] = []

        async def open_speaker(url: str, tok: str) -> SessionClient:
            c = SessionClient(url, src="en", tgt="es")
            c.init.token = tok
            await c.connect()
            speakers.append(c)
            return c

        async def speak(c: SessionClient) -> None:
            for i in range(utterances):
                await c.send_utterance(i, pcm(0.2))
                await asyncio.sleep(0.08)

        def sighup() -> None:
            fleet.signal("A", signal.SIGHUP)
            fleet.signal("B", signal.SIGHUP)

        async def operator(base: str, tok: str) -> int:
            async with httpx.AsyncClient(timeout=5) as http:
                got = await http.get(f"{base}/api/v1/nodes", headers={"Authorization": f"Bearer {tok}"})
            return got.status_code

        first = [
            await open_speaker(s.url, token("k1", S1, sub=f"k1-{n}")) for n, s in enumerate([a, b, a, b])
        ]
        load = [asyncio.create_task(speak(c)) for c in first]
        await asyncio.sleep(0.4)
        # 1: the new key, node token and operator token are added beside the old
        keys.write_text(f"k1 {S1}\nk2 {S2}\n")
        nodes.write_text(
            "n1 node-one-token-0123456789\nn2 node-two-token-0123456789\nn3 node-three-token-0123456789\n"
        )
        operators.write_text(f"{op_old}\n{op_new}\n")
        sighup()
        await asyncio.sleep(0.5)
        second = [await open_speaker(s.url, token("k2", S2, sub=f"k2-{n}")) for n, s in enumerate([a, b])]
        load += [asyncio.create_task(speak(c)) for c in second]
        fleet.node("n3", [a.url], delay_ms=50, env={"LINGUAMESH_NODE_TOKEN": "node-three-token-0123456789"})
        await fleet.wait_node("A", "n3", operator_token=op_new)
        assert {await operator(s.http, op_old) for s in (a, b)} == {200}
        assert {await operator(s.http, op_new) for s in (a, b)} == {200}
        # 2: the old ones are removed
        keys.write_text(f"k2 {S2}\n")
        operators.write_text(f"{op_new}\n")
        sighup()
        await asyncio.sleep(0.5)
        for s in (a, b):
            assert (await refused(s.url, token("k1", S1))).startswith("unauthorized")
            assert await operator(s.http, op_old) == 401 and await operator(s.http, op_new) == 200
        await asyncio.gather(*load)
        lost = dup = 0
        for c in speakers:
            got: dict[int, int] = {}
            for r in await c.results(utterances, timeout=30 * SCALE):
                assert r.status == "ok", r
                got[r.utterance_index] = got.get(r.utterance_index, 0) + 1
            await asyncio.sleep(0.3)
            while True:  # anything more is a duplicate
                try:
                    extra = await c.recv(0.05)
                except TimeoutError:
                    break
                if isinstance(extra, p.TranslationResult):
                    got[extra.utterance_index] = got.get(extra.utterance_index, 0) + 1
            lost += sum(1 for i in range(utterances) if i not in got)
            dup += sum(n - 1 for n in got.values() if n > 1)
        assert (lost, dup) == (0, 0)
        for s in ("A", "B"):
            assert fleet.schedulers[s].proc is not None and fleet.schedulers[s].proc.proc.poll() is None
            assert (tmp_path / f"{s}.1.log").read_text().count("scheduler.reloaded") == 2
        for c in speakers:
            await c.disconnect()


async def test_listener_languages_stay_within_the_speakers_grants_and_count_in_its_usage(
    tmp_path: Path,
) -> None:
    """The speaker's token grants en, es and fr. On another instance than the session's (the
    grants travel through Redis), a viewer asking for de is told `not_granted` and de is
    never translated; a viewer asking for fr gets it, and the fr jobs count in the key's
    usage."""
    from ..integration.test_listeners import results, standing, until, viewer

    keys = tmp_path / "keys"
    keys.write_text(f"k1 {S1}\n")
    async with Fleet(tmp_path, redis=True) as fleet:
        a = await fleet.scheduler("A", "--api-keys", str(keys))
        b = await fleet.scheduler("B", "--api-keys", str(keys))
        more = '[[engines]]\nkind = "test"\nlanguages = ["en", "fr", "de"]\n'  # en->fr, en->de too
        fleet.node("n1", [a.url], delay_ms=0, engine=more)
        await fleet.wait_node("A", "n1")
        c = SessionClient(a.url, src="en", tgt="es")
        c.init.token = token("k1", S1, {"speak": True, "langs": ["en", "es", "fr"]})
        async with c:
            assert c.ack is not None
            base = f"{b.http}/api/v1/sessions/{c.ack.session_id}/events/stream?token={c.ack.view_token}"
            async with viewer(base + "&lang=de") as de, viewer(base + "&lang=fr") as fr:
                await until(lambda: standing(de) == ["not_granted"] and standing(fr) == ["ok"], "standings")
                await asyncio.sleep(1.5)  # (the holder reads the listener languages at most once a second)
                for i in range(3):
                    await c.send_utterance(i, pcm(0.2))
                    await asyncio.sleep(0.4)
                # (utterance 0 has fr too unless the store's read took more than 50 ms)
                await until(lambda: {r["utterance_index"] for r in results(fr)} >= {1, 2}, "fr's results")
                await asyncio.sleep(0.5)
            mine = await c.results(3, 10 * SCALE)
        assert sorted((r.utterance_index, r.tgt_lang) for r in mine) == [(0, "es"), (1, "es"), (2, "es")]
        assert {r["tgt_lang"] for r in results(fr)} == {"fr"} and results(de) == []
        message = next(d["message"] for e, d in de if e == "listener")
        assert message == "the speaker's access token does not grant de", message
        async with httpx.AsyncClient(timeout=5) as http:
            usage = (await http.get(f"{a.http}/api/v1/usage")).json()["keys"]["k1"]
        # a job per target charged, the listener's too: es three times, fr as often as it ran
        assert usage["utterances"] == 3 and usage["jobs"] == 3 + len(results(fr)), usage
