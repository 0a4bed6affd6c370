"""Real processes to break, and clients that count what became of every utterance.

Used by the fault tests (``tests/resilience``) and by ``bench/soak.py``; never run by
users. A :class:`Fleet` starts redis-server, scheduler and node processes on loopback
and sends them signals (SIGKILL, SIGTERM, SIGSTOP/SIGCONT) or restarts them on the
same port. A :class:`Speaker` is one client session that sends utterances at a pace,
reconnects and resumes (on any instance) when its socket drops, and books every
utterance's outcome: a ``translation_result`` (ok or failed, with its code) or an
``error`` whose ``ref`` names it. At the end an utterance with no outcome is *lost*
and one with more than one is *duplicated*; both must be 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from linguamesh import protocol as p
from linguamesh.client import ClientError, SessionClient
from linguamesh.client.session import utterance_ref

from .conftest import SCALE, free_port, pcm
from .procs import Proc, launch, node_config, wait_ready
from .redis_server import RedisServer


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (from /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class SchedulerProc:
    name: str
    port: int
    flags: tuple[str, ...]
    env: dict[str, str] | None = None
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.proc.pid


@dataclass
class NodeProc:
    node_id: str
    urls: list[str]
    delay_ms: int
    slots: int
    engine: str = ""
    proc: Proc | None = None
    env: dict[str, str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.proc.pid


class Fleet:
    """redis-server, schedulers and nodes as real processes, each logging to ``workdir``."""

    def __init__(self, workdir: Path, *, redis: bool = True, measure: bool = True) -> None:
        """``measure=False``: the processes run without coverage (load tests)."""
        self.workdir = workdir
        self.measure = measure
        self.redis = RedisServer(workdir / "redis") if redis else None
        self.schedulers: dict[str, SchedulerProc] = {}
        self.nodes: dict[str, NodeProc] = {}
        self._runs: Counter[str] = Counter()

    async def __aenter__(self) -> Fleet:
        if self.redis is not None:
            self.redis.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for n in self.nodes.values():
            if n.proc is not None:
                _kill(n.proc)
        for s in self.schedulers.values():
            if s.proc is not None:
                _kill(s.proc)
        if self.redis is not None:
            if self.redis.proc is not None and self.redis.proc.poll() is None:
                os.kill(self.redis.proc.pid, signal.SIGCONT)
            self.redis.stop()

    def _log(self, name: str) -> Path:
        self._runs[name] += 1
        return self.workdir / f"{name}.{self._runs[name]}.log"

    # ------------------------------------------------------------------ schedulers

    async def scheduler(
        self, name: str, *flags: str, ready: bool = True, env: dict[str, str] | None = None
    ) -> SchedulerProc:
        """Start instance ``name`` (on Redis when the fleet has one; ``env``: LINGUAMESH_* settings)."""
        s = SchedulerProc(name, free_port(), flags, env)
        self.schedulers[name] = s
        await self.start_scheduler(name, ready=ready)
        return s

    async def start_scheduler(self, name: str, *, ready: bool = True) -> None:
        """(Re)start instance ``name`` on its port."""
        s = self.schedulers[name]
        store = ("--redis-url", self.redis.url, "--instance-id", name) if self.redis is not None else ()
        s.proc = launch(
            "scheduler", "--port", str(s.port), "--heartbeat-interval", "0.5", "--log", "info",
            *store, *s.flags, log=self._log(name), env=s.env, measure=self.measure,
        )  # fmt: skip
        if ready:
            await wait_ready(s.port, s.proc, timeout=20)

    # ------------------------------------------------------------------ nodes

    def node(
        self,
        node_id: str,
        urls: list[str],
        *,
        delay_ms: int = 200,
        slots: int = 4,
        engine: str = "",
        env: dict[str, str] | None = None,
    ) -> NodeProc:
        """A node process with the test engines (``engine``: more settings for them, TOML lines;
        ``env``: more environment variables)."""
        n = NodeProc(node_id, urls, delay_ms, slots, engine, env=env)
        self.nodes[node_id] = n
        self.start_node(node_id)
        return n

    def start_node(self, node_id: str) -> None:
        n = self.nodes[node_id]
        cfg = node_config(self.workdir, node_id, n.delay_ms, n.slots, engine=n.engine)
        urls = [a for u in n.urls for a in ("--scheduler", u)]
        n.proc = launch(
            "node", *urls, "--config", str(cfg), "--log", "info", log=self._log(node_id), env=n.env,
            measure=self.measure,
        )  # fmt: skip

    async def wait_node(
        self, scheduler: str, node_id: str, timeout: float = 20, operator_token: str | None = None
    ) -> None:
        """Until ``scheduler`` lists ``node_id`` (connected to it or to another instance)."""
        s = self.schedulers[scheduler]
        end = time.monotonic() + timeout * SCALE
        auth = {"Authorization": f"Bearer {operator_token}"} if operator_token else {}
        async with httpx.AsyncClient(headers=auth) as http:
            while time.monotonic() < end:
                try:
                    pools = (await http.get(f"{s.http}/api/v1/pools", timeout=2)).json()["pools"]
                    if any(node_id in pool["nodes"] for pool in pools):
                        return
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"{scheduler} never listed node {node_id}")

    # ------------------------------------------------------------------ faults

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to scheduler or node ``name``, or to ``"redis"``."""
        os.kill(self.pid(name), sig)

    def pid(self, name: str) -> int:
        if name == "redis":
            assert self.redis is not None and self.redis.proc is not None
            return self.redis.proc.pid
        if name in self.schedulers:
            return self.schedulers[name].pid
        return self.nodes[name].pid

    def wait_exit(self, name: str, timeout: float = 10) -> int | None:
        proc = self.schedulers[name].proc if name in self.schedulers else self.nodes[name].proc
        assert proc is not None
        try:
            return proc.proc.wait(timeout * SCALE)
        except subprocess.TimeoutExpired:  # still running: the caller decides
            return None

    def restart_redis_empty(self) -> None:
        assert self.redis is not None
        self.redis.stop()
        self.redis.start()

    def rss(self) -> dict[str, float]:
        """RSS in MB of every running process of the fleet."""
        out: dict[str, float] = {}
        for name in [*self.schedulers, *self.nodes, *(["redis"] if self.redis else [])]:
            try:
                out[name] = round(rss_mb(self.pid(name)), 1)
            except (AssertionError, KeyError):
                pass
        return out


def _kill(p: Proc) -> None:
    if p.proc.poll() is None:
        p.proc.kill()
        p.proc.wait()


# ---------------------------------------------------------------------- clients


@dataclass
class Outcome:
    sent_at: float
    ends: list[str] = field(default_factory=list)
    done_at: float | None = None


class Speaker:
    """One session: ``say()`` sends the next utterance (or keeps it until the socket is
    back); every event is booked against the utterance it names; a dropped socket is
    resumed on the next URL. Outcomes are keyed ``(generation, index)``: a session that
    cannot be resumed starts a new generation, and what the old one left open is lost."""

    def __init__(self, urls: list[str], name: str, *, seconds: float = 0.1, tgt: str = "es") -> None:
        self.urls = urls
        self.name = name
        self.audio = pcm(seconds)
        self.tgt = tgt
        self.client: SessionClient | None = None
        self.generation = 0
        self.next_index = 0
        self.outcomes: dict[tuple[int, int], Outcome] = {}
        self.unattributed: list[str] = []
        self.reconnects = 0
        self.abandoned = 0
        self._url_i = 0
        self._rx: asyncio.Task[None] | None = None
        self._online = asyncio.Event()
        self._closing = False
        self._booked = asyncio.Event()
        #: the session id of each generation (for the trace tool)
        self.session_ids: dict[int, str] = {}

    async def start(self) -> None:
        self.client = SessionClient(self.urls[0], src="en", tgt=self.tgt, tts=False, partials=False)
        await self.client.connect()
        self.session_ids[self.generation] = self.client.session_id
        self._online.set()
        self._rx = asyncio.create_task(self._receive(), name=f"speaker-{self.name}")

    async def say(self) -> None:
        assert self.client is not None
        i = self.next_index
        self.next_index += 1
        self.outcomes[(self.generation, i)] = Outcome(time.monotonic())
        msg = p.Utterance(
            utterance_index=i, audio=self.audio, request_id=f"{self.name}-{self.generation}-{i}"
        )
        self.client.unconfirmed[i] = msg  # re-sent by resume() if this send does not get through
        if self._online.is_set():
            try:
                await self.client.send(msg)
            except (ConnectionClosed, RuntimeError):
                pass

    def drop(self) -> None:
        """Cut the socket from the client's side (the receiver resumes)."""
        if self.client is not None and self.client.ws is not None:
            self.client.ws.transport.abort()  # type: ignore[attr-defined]

    async def _receive(self) -> None:
        while not self._closing:
            c = self.client
            assert c is not None
            try:
                ev = await c.recv()
            except (ConnectionClosed, RuntimeError, OSError):
                self._online.clear()
                await self._reconnect()
                continue
            self._book(ev)

    def _book(self, ev: p.SessionEvent) -> None:
        now = time.monotonic()
        if isinstance(ev, p.TranslationResult):
            key = (self.generation, ev.utterance_index)
            end = "ok" if ev.status == "ok" else f"failed:{ev.error.code if ev.error else '?'}"
        elif isinstance(ev, p.Error):  # the client library no longer re-sends what it names
            index = utterance_ref(ev.ref)
            if index is None:
                self.unattributed.append(ev.code)
                return
            key = (self.generation, index)
            end = f"error:{ev.code}"
        else:
            return
        o = self.outcomes.get(key)
        if o is None:
            self.unattributed.append(f"unknown utterance {key}: {end}")
            return
        o.ends.append(end)
        o.done_at = o.done_at or now
        self._booked.set()

    async def _reconnect(self) -> None:
        c = self.client
        assert c is not None
        while not self._closing:
            self._url_i += 1
            c.url = self.urls[self._url_i % len(self.urls)] + "/ws/session"
            try:
                await c.resume()
                self.reconnects += 1
                self._online.set()
                return
            except ClientError as exc:
                if exc.code in ("session_not_found", "unauthorized"):
                    await self._new_generation()
                    return
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                pass
            await asyncio.sleep(0.2)

    async def _new_generation(self) -> None:
        """The session is gone: what it left open is lost; carry on in a new one."""
        self.abandoned += 1
        self.generation += 1
        self.next_index = 0
        c = self.client
        assert c is not None
        c.unconfirmed.clear()
        c.last_seq = 0
        await c.connect()
        self.session_ids[self.generation] = c.session_id
        self._online.set()

    def open(self) -> int:
        return sum(1 for o in self.outcomes.values() if not o.ends)

    async def settle(self, timeout: float) -> None:
        """Until every utterance has an outcome (or ``timeout``)."""
        end = time.monotonic() + timeout
        while self.open() and time.monotonic() < end:
            self._booked.clear()
            try:
                await asyncio.wait_for(self._booked.wait(), max(0.01, end - time.monotonic()))
            except TimeoutError:
                break

    async def stop(self) -> None:
        self._closing = True
        if self._rx is not None:
            self._rx.cancel()
            await asyncio.gather(self._rx, return_exceptions=True)
        if self.client is not None:
            try:
                await self.client.disconnect()
            except Exception:
                pass


@dataclass
class Tally:
    sent: int
    ok: int
    failed: dict[str, int]
    lost: int
    duplicated: int
    unattributed: list[str]
    latencies: list[float]

    def line(self) -> str:
        lat = self.latencies
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        p99 = sorted(lat)[int(len(lat) * 0.99) - 1 if len(lat) > 1 else 0] * 1000 if lat else float("nan")
        return (
            f"sent {self.sent}  ok {self.ok}  failed {dict(self.failed)}  lost {self.lost}  "
            f"duplicated {self.duplicated}  p50 {p50:.0f} ms  p99 {p99:.0f} ms"
        )


def tally(speakers: list[Speaker], quiet: list[tuple[float, float]] | None = None) -> Tally:
    """Count outcomes over ``speakers``; latencies only of utterances whose time in flight
    lies outside the ``quiet`` windows (monotonic start, end) — the fault windows."""
    ok = lost = dup = 0
    failed: Counter[str] = Counter()
    lat: list[float] = []
    unattributed: list[str] = []
    for s in speakers:
        unattributed += s.unattributed
        for o in s.outcomes.values():
            if not o.ends:
                lost += 1
                continue
            if len(o.ends) > 1:
                dup += 1
            first = o.ends[0]
            if first == "ok":
                ok += 1
                # an utterance whose time in flight overlaps a fault window is the fault's
                if o.done_at is not None and not any(
                    o.sent_at <= b and o.done_at >= a for a, b in quiet or []
                ):
                    lat.append(o.done_at - o.sent_at)
            else:
                failed[first] += 1
    sent = sum(len(s.outcomes) for s in speakers)
    return Tally(sent, ok, dict(failed), lost, dup, unattributed, lat)


async def finish(speakers: list[Speaker], timeout: float) -> Tally:
    """Wait (at most ``timeout``) for every utterance's outcome, stop the clients, and check
    the promise: nothing lost, nothing duplicated, every error names its utterance."""
    for s in speakers:
        await s.settle(timeout)
    for s in speakers:
        await s.stop()
    t = tally(speakers)
    print(t.line())
    assert t.lost == 0 and t.duplicated == 0, t.line()
    assert t.unattributed == [], t.unattributed
    return t
