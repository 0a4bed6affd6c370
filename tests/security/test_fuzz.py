"""Fuzzing both WebSocket endpoints of a real scheduler.

Hypothesis draws frames — random text and bytes, random JSON, valid messages with
fields removed, retyped or replaced, unknown types, deep nesting, oversized frames —
and sends each to ``/ws/session`` or ``/ws/node``, before or after the handshake,
over real sockets to a scheduler serving in a thread of its own. After every frame
the socket must still answer (or have been closed for a fatal code only). After the
run: no error record and no traceback in the scheduler's log, no secret in it, no
task left at shutdown, bounded RSS growth, and a normal client is served. It runs
twice: anonymous (loopback, no keys) and with API keys on (``session_init`` carries an
access token, which the fuzzer mutates like any field).
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from linguamesh import protocol as p
from linguamesh.client import SessionClient
from linguamesh.observability.logging import configure, reset
from linguamesh.runtime import make_server
from linguamesh.scheduler.config import SchedulerConfig

from ..conftest import SCALE, free_port, pcm, start_node, test_engines

AUDIO = base64.b64encode(pcm(0.1)).decode()
SECRET = "fuzz-key-secret-" + "f" * 32
TOKEN = jwt.encode(
    {"iss": "fz", "sub": "fuzzer", "exp": int(time.time()) + 86400, "grants": {"speak": True, "view": True}},
    SECRET,
    algorithm="HS256",
)
CAPS = {"asr_languages": ["en"], "nmt_pairs": [["en", "es"]], "tts_languages": ["es"]}
VALID = {
    "session": [
        {"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "es", "token": TOKEN},
        {"type": "utterance", "utterance_index": 0, "audio": AUDIO},
        {"type": "audio_chunk", "seq": 0, "audio": AUDIO, "is_final": True},
        {"type": "ack", "seq": 1},
        {"type": "session_init", "protocol_version": 1, "src_lang": "en", "tgt_lang": "es", "token": TOKEN,
         "resume": {"session_id": "s-0", "resume_token": "t", "last_seq": 0}},
    ],
    "node": [
        {"type": "node_register", "protocol_version": 1, "node_id": "fz", "version": "1", "capabilities": CAPS,
         "max_concurrent_jobs": 2},
        {"type": "node_heartbeat", "running_jobs": 0, "model_stats": {"m": {"loads": 1.0}}},
        {"type": "job_ack", "job_id": "job-1", "attempt_id": 1},
        {"type": "job_result", "job_id": "job-1", "attempt_id": 1, "success": True, "timings": {}},
        {"type": "job_partial", "job_id": "job-1", "attempt_id": 1, "stage": "asr", "text": "x"},
    ],
}  # fmt: skip
LIMIT = 64 * 1024
WS_LIMIT = LIMIT + 64 * 1024  # the WebSocket layer's own bound (runtime.WS_MARGIN)

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, endpoint: str) -> str:
    msg = dict(draw(st.sampled_from(VALID[endpoint])))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*msg, "type", "extra"]))
        action = draw(st.sampled_from(["drop", "replace", "retype"]))
        if action == "drop":
            msg.pop(key, None)
        elif action == "retype":
            msg[key] = draw(st.sampled_from([[], {}, "1", 1, -1, None, True, 1.5, "x" * 300]))
        else:
            msg[key] = draw(json_values)
    return json.dumps(msg, allow_nan=True)


def frames(endpoint: str) -> st.SearchStrategy[str | bytes]:
    deep = st.integers(30, 5000).map(lambda d: '{"type":"ack","seq":1,"x":' + "[" * d + "]" * d + "}")
    return st.one_of(
        st.text(max_size=200),
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v, allow_nan=True)),
        mutated(endpoint),
        mutated(endpoint),
        st.sampled_from(VALID[endpoint]).map(json.dumps),
        deep,
        st.integers(LIMIT + 1, 3 * LIMIT).map(lambda n: '{"type":"ack","seq":1,"pad":"' + "x" * n + '"}'),
    )


class Served:
    """A scheduler serving in a thread with its own event loop (so hypothesis's
    synchronous examples can talk to it over real sockets)."""

    def __init__(self, log_file: Path, api_keys: str | None = None) -> None:
        self.port = free_port()
        self.config = SchedulerConfig(
            port=self.port, max_message_bytes=LIMIT, handshake_timeout=30, api_keys=api_keys
        )
        self.server = make_server(self.config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.log_file = log_file
        self.leftover: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            await self.server.serve()
            await asyncio.sleep(0.2 * SCALE)
            self.leftover = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        asyncio.run(serve())

    def __enter__(self) -> Served:
        self.rss_at_start = rss_mb()
        self.thread.start()
        for _ in range(1000):
            if self.server.started:
                return self
            threading.Event().wait(0.01)
        raise TimeoutError("scheduler did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the scheduler did not stop"


@pytest.fixture(params=["anonymous", "api_keys"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("fuzz")
    log_file = tmp / "sched.log"
    keys = None
    if request.param == "api_keys":
        keys = tmp / "keys"
        keys.write_text(f"fz {SECRET}\n")
    configure("info", json_file=log_file, console=False, cache=False)
    try:
        with Served(log_file, str(keys) if keys else None) as s:
            yield s
    finally:
        reset()


class Sockets:
    """One socket per (endpoint, phase), reopened when the scheduler closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open: dict[tuple[str, str], ClientConnection] = {}
        self.tokens: set[str] = set()

    def get(self, endpoint: str, phase: str) -> ClientConnection:
        ws = self.open.get((endpoint, phase))
        if ws is not None:
            return ws
        ws = connect(f"ws://127.0.0.1:{self.port}/ws/{endpoint}", max_size=None, open_timeout=10, legacy=True)
        if phase == "after":
            first = json.dumps(
                VALID[endpoint][0]
                if endpoint == "session"
                else {**VALID["node"][0], "node_id": f"fz{len(self.open)}-{id(ws)}"}
            )
            ws.send(first)
            reply = json.loads(ws.recv(10 * SCALE))
            assert reply["type"] in ("session_init_ack", "node_register_ack"), reply
            self.tokens |= {reply[k] for k in ("resume_token", "view_token") if k in reply}
        self.open[(endpoint, phase)] = ws
        return ws

    def drop(self, endpoint: str, phase: str) -> None:
        ws = self.open.pop((endpoint, phase), None)
        if ws is not None:
            ws.close()


FATAL = {"unsupported_version", "unauthorized", "node_id_in_use"}
PROBE = '{"type":"teleport"}'


def _replies(ws: ClientConnection, out: list[dict[str, Any]]) -> None:
    """Collect everything the scheduler sends up to its answer to the probe."""
    while True:
        msg = json.loads(ws.recv(10 * SCALE))
        out.append(msg)
        if msg["type"] == "error" and "teleport" in msg.get("message", ""):
            return


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    endpoint=st.sampled_from(["session", "node"]), phase=st.sampled_from(["before", "after"]), data=st.data()
)
def fuzz_one(sockets: Sockets, endpoint: str, phase: str, data: st.DataObject) -> None:
    frame = data.draw(frames(endpoint), label="frame")
    ws = sockets.get(endpoint, phase)
    replies: list[dict[str, Any]] = []
    try:
        ws.send(frame)
        ws.send(PROBE)
        _replies(ws, replies)
    except ConnectionClosed as closed:
        sockets.drop(endpoint, phase)
        codes = {r.get("code") for r in replies if r["type"] == "error"}
        reason = closed.rcvd.reason if closed.rcvd is not None else ""
        if reason == "too many bad frames":  # the probes count too: a socket is cut after 20 in 10 s
            assert closed.rcvd is not None and closed.rcvd.code == 1008
            return
        if len(frame.encode()) > WS_LIMIT:  # over the frame limit + 64 KB: the WebSocket layer
            # closes (1009; or the connection is cut while the frame is still being sent)
            assert closed.rcvd is None or closed.rcvd.code == 1009, reason
            return
        assert reason in FATAL and codes & FATAL, f"closed ({closed}) after {frame!r:.200}: {replies}"
        return
    for r in replies:
        if r["type"] == "error":
            assert r["code"] in {c.value for c in p.ErrorCode}, r
            assert r["code"] != "internal", f"a handler raised on {frame!r:.300}: {r}"
        for k in ("resume_token", "view_token"):
            if k in r:
                sockets.tokens.add(r[k])


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def test_fuzzed_frames_get_coded_answers_and_leave_the_scheduler_clean(served: Served) -> None:
    sockets = Sockets(served.port)
    keys_on = served.config.api_keys is not None
    try:
        fuzz_one(sockets)
    finally:
        for key in list(sockets.open):
            sockets.drop(*key)

    async def normal_client() -> None:
        url = f"ws://127.0.0.1:{served.port}"
        node = await start_node(url, "after-fuzz", engines=test_engines())
        try:
            c = SessionClient(url, src="en", tgt="es")
            c.init.token = TOKEN if keys_on else None
            async with c:
                await c.send_utterance(0, pcm(0.3))
                result = await c.next_result(30 * SCALE)
                assert result.status == "ok", result
        finally:
            await node.stop()

    asyncio.run(normal_client())
    served.__exit__(None, None, None)
    text = served.log_file.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    # (the fuzzing client runs in this process too: its own complaints about a connection
    # the server cut are not the server's)
    bad = [
        r for r in records
        if (r.get("level") in ("error", "critical") or "exception" in r)
        and not str(r.get("logger", "")).startswith("websockets.client")
    ]  # fmt: skip
    assert not bad, bad[:3]
    # (nor the client's own traceback: websockets' sync client logs one when the server
    # cut a connection it was reading, "EOFError: stream ended")
    lines = [line for line in text.splitlines() if line.strip()]
    server = [line for line, r in zip(lines, records, strict=True)
              if not str(r.get("logger", "")).startswith("websockets.client")]  # fmt: skip
    assert not any("Traceback" in line for line in server)
    assert sockets.tokens and not any(t in text for t in sockets.tokens)
    assert SECRET not in text and TOKEN not in text
    assert not served.leftover, served.leftover
    growth = rss_mb() - served.rss_at_start
    print(f"\nfuzz: {len(records)} log records; RSS {served.rss_at_start:.0f} -> {rss_mb():.0f} MB")
    assert growth < 150
