"""Dispatch benchmark: a real scheduler process, zero-work nodes and client sessions
over real WebSockets on loopback. Prints figures; asserts nothing about time.

    python bench/dispatch.py [--jobs 3000] [--c1-jobs 1000] [--nodes 4] [--sessions 8]
    python bench/dispatch.py --redis-url redis://127.0.0.1:6379/0 --instances 2

Figures:
  c1   round trip (client sends utterance -> client receives its translation_result)
       p50/p90/p99 with one job in flight
  c64  sustained jobs/s and p50/p99 with 64 jobs in flight
  overhead  scheduler-only time: client send -> node receives job_assign, and
       node sends job_result -> client receives the result, p50/p99
  selection cost per job with 10, 1,000 and 10,000 registered nodes (pooled and flat)
  lost / duplicated results (must both be 0)
With --redis-url the schedulers share state in Redis; with --instances 2 the nodes
connect to one instance and the sessions to the other. Then also:
  scheduler CPU seconds per 1,000 jobs (all scheduler processes, c64 phase; user and
       system time, preemptions per job), and the CPU of this process and of redis-server
  --contend: the same with a busy process beside the scheduler in the c64 phase, to
       compare one instance under the CPU contention two instances cause on 2 cores
  --separate (with --instances 2): two independent single-instance schedulers, each with
       half the nodes and sessions: the process count and contention of two instances,
       but no job crosses between them - the baseline for what crossing costs (the c1
       phase then runs on one of them)
  --instructions: run the schedulers under valgrind's callgrind and count the
       instructions they execute per job in the c64 phase. Unlike CPU seconds the count
       does not depend on what else the machine runs (CPU seconds drift by tens of per
       cent between runs on a shared machine); the schedulers run about 40x slower,
       so use fewer jobs (e.g. --c1-jobs 50 --jobs 2000 --paced-seconds 0)
  Redis round trips per job (requests each instance sent, from its /metrics) and
  Redis commands per job (INFO commandstats, scripts' inner calls included)
  sessions: --session-opens sessions opened and closed one after another (after the
       other phases): wall time, and with --instructions / --redis-url the instructions
       and Redis commands per session
  --tokens: API keys on (--api-keys, a key with quotas): every session_init carries an
       access token, every utterance is charged to the key. Run with and without it to
       get the cost of token checks and quotas per session and per utterance (job).

The simulated node answers like the real agent (job_ack, job_started, job_result)
but does no work. Bounded: every phase has a job count and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from linguamesh import protocol as p
from linguamesh.core.ids import NodeId
from linguamesh.core.nodes import NodeCapabilities, NodeView
from linguamesh.core.selection import Request, select_flat, select_pooled
from linguamesh.core.stages import requirements
from linguamesh.state.memory import MemoryStateStore

AUDIO = b"\x00\x00" * 1600  # 0.1 s of silence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


@dataclass
class Stats:
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)
    assign_at: dict[tuple[str, int], float] = field(default_factory=dict)
    result_sent_at: dict[str, float] = field(default_factory=dict)
    rtt: list[float] = field(default_factory=list)
    to_node: list[float] = field(default_factory=list)
    to_client: list[float] = field(default_factory=list)
    results: dict[tuple[str, int], int] = field(default_factory=dict)
    failed: int = 0
    #: error events by code (an utterance refused gets no result)
    errors: dict[str, int] = field(default_factory=dict)


class SimNode:
    """Zero-work node speaking the same messages as the real agent."""

    def __init__(self, url: str, node_id: str, slots: int, stats: Stats) -> None:
        self.url, self.node_id, self.slots, self.stats = url, node_id, slots, stats

    async def run(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        async with connect(self.url + "/ws/node", max_size=None, compression=None) as ws:
            caps = p.Capabilities(asr_languages=["en"], nmt_pairs=[("en", "es")], tts_languages=["es"])
            await ws.send(
                p.encode_str(
                    p.NodeRegister(
                        protocol_version=1,
                        node_id=self.node_id,
                        version="bench",
                        capabilities=caps,
                        max_concurrent_jobs=self.slots,
                    )
                )
            )
            ack = p.decode_to_node(await ws.recv())
            assert isinstance(ack, p.NodeRegisterAck)
            ready.set()

            async def beat() -> None:
                while True:
                    await asyncio.sleep(ack.heartbeat_interval_s)
                    await ws.send(p.encode_str(p.NodeHeartbeat(running_jobs=0)))

            hb = asyncio.create_task(beat())
            try:
                async for frame in ws:
                    msg = p.decode_to_node(frame)
                    if isinstance(msg, p.JobAssign):
                        now = time.perf_counter()
                        self.stats.assign_at[(msg.session_id, msg.utterance_index)] = now
                        await ws.send(p.encode_str(p.JobAck(job_id=msg.job_id, attempt_id=msg.attempt_id)))
                        await ws.send(
                            p.encode_str(p.JobStarted(job_id=msg.job_id, attempt_id=msg.attempt_id))
                        )
                        res = p.JobResult(
                            job_id=msg.job_id,
                            attempt_id=msg.attempt_id,
                            success=True,
                            text_asr="hello",
                            text_translated="hola",
                        )
                        self.stats.result_sent_at[msg.job_id] = time.perf_counter()
                        await ws.send(p.encode_str(res))
                    if stop.is_set():
                        break
            finally:
                hb.cancel()


class SimSession:
    def __init__(self, url: str, stats: Stats) -> None:
        self.url, self.stats = url, stats
        self.next_index = 0
        self.waiters: dict[int, asyncio.Future[None]] = {}

    async def open(self, token: str | None = None) -> None:
        self.ws = await connect(self.url + "/ws/session", max_size=None, compression=None)
        init = p.SessionInit(
            protocol_version=1, src_lang="en", tgt_lang="es", tts=False, partials=False, token=token
        )
        await self.ws.send(p.encode_str(init))
        ack = p.decode_event(await self.ws.recv())
        assert isinstance(ack, p.SessionInitAck), ack
        self.session_id = ack.session_id
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            ev = p.decode_event(frame)
            if isinstance(ev, p.TranslationResult):
                now = time.perf_counter()
                key = (self.session_id, ev.utterance_index)
                self.stats.results[key] = self.stats.results.get(key, 0) + 1
                if ev.status != "ok":
                    self.stats.failed += 1
                sent = self.stats.sent_at.get(key)
                if sent is not None:
                    self.stats.rtt.append(now - sent)
                assign = self.stats.assign_at.get(key)
                if assign is not None:
                    self.stats.to_node.append(assign - sent if sent else 0)
                rs = self.stats.result_sent_at.get(ev.job_id)
                if rs is not None:
                    self.stats.to_client.append(now - rs)
                fut = self.waiters.pop(ev.utterance_index, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif isinstance(ev, p.Error):  # e.g. rate_limited: the utterance will get no result
                self.stats.errors[ev.code] = self.stats.errors.get(ev.code, 0) + 1
                index = int(ev.ref.split()[-1]) if ev.ref and ev.ref.startswith("utterance ") else None
                fut = self.waiters.pop(index, None) if index is not None else None
                if fut is not None and not fut.done():
                    fut.set_exception(RuntimeError(f"utterance {index}: {ev.code}: {ev.message}"))

    async def one(self) -> None:
        index = self.next_index
        self.next_index += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[index] = fut
        self.stats.sent_at[(self.session_id, index)] = time.perf_counter()
        await self.ws.send(p.encode_str(p.Utterance(utterance_index=index, audio=AUDIO)))
        await asyncio.wait_for(fut, 30)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def open_and_close(url: str, count: int, token: str | None, limit_s: float) -> tuple[int, float]:
    """Open a session, close it (``session_close``, wait for ``session_closed``), ``count``
    times one after another; the sessions done and the seconds taken."""
    start = time.perf_counter()
    done = 0
    while done < count and time.perf_counter() - start < limit_s:
        async with connect(url + "/ws/session", max_size=None, compression=None) as ws:
            init = p.SessionInit(protocol_version=1, src_lang="en", tgt_lang="es", tts=False, token=token)
            await ws.send(p.encode_str(init))
            ack = p.decode_event(await ws.recv())
            assert isinstance(ack, p.SessionInitAck), ack
            await ws.send(p.encode_str(p.SessionClose()))
            while not isinstance(p.decode_event(await ws.recv()), p.SessionClosed):
                pass
        done += 1
    return done, time.perf_counter() - start


async def run_phase(sessions: list[SimSession], jobs: int, concurrency: int, limit_s: float) -> float:
    remaining = jobs
    start = time.perf_counter()

    async def worker(sess: SimSession) -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() - start < limit_s:
            remaining -= 1
            await sess.one()

    workers = [worker(sessions[i % len(sessions)]) for i in range(concurrency)]
    await asyncio.gather(*workers)
    return time.perf_counter() - start


async def run_paced(sessions: list[SimSession], jobs: int, rate: float, limit_s: float) -> float:
    """Open loop: start one job every 1/rate seconds (round robin over the sessions),
    whatever is still in flight; return when every started job has its result."""
    start = time.perf_counter()
    pending: list[asyncio.Task[None]] = []
    for i in range(jobs):
        due = start + i / rate
        if due - time.perf_counter() > 0:
            await asyncio.sleep(due - time.perf_counter())
        if time.perf_counter() - start > limit_s:
            break
        pending.append(asyncio.create_task(sessions[i % len(sessions)].one()))
    await asyncio.gather(*pending, return_exceptions=True)
    return time.perf_counter() - start


INTAKE_LIMITS = (
    "SESSION_UTTERANCES_PER_S", "SESSION_UTTERANCE_BURST", "SESSION_AUDIO_PER_S", "SESSION_AUDIO_BURST",
    "IP_UTTERANCES_PER_S", "IP_UTTERANCE_BURST", "IP_AUDIO_PER_S", "IP_AUDIO_BURST",
    "IP_SESSIONS_PER_S", "IP_SESSION_BURST",
)  # fmt: skip


def start_scheduler(port: int, extra: list[str], wrap: list[str]) -> subprocess.Popen[bytes]:
    cmd = [
        *wrap,
        sys.executable,
        "-m",
        "linguamesh.cli",
        "scheduler",
        "--port",
        str(port),
        "--log",
        "error",
        *extra,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src"),
        # the load generator is a few sessions on one address standing for many users:
        # the intake limits (per session and per address) are opened wide for it
        **{f"LINGUAMESH_{k}": "1e12" for k in INTAKE_LIMITS},
    }
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    for _ in range(int(timeout / 0.05)):
        if proc.poll() is not None:
            raise SystemExit(f"scheduler exited with {proc.returncode}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("scheduler did not start")


def callgrind_control(action: str, pid: int) -> str:
    return subprocess.run(
        ["callgrind_control", action, str(pid)], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def instructions(pid: int) -> int:
    """Instructions a process run under callgrind has executed so far (all threads)."""
    out = callgrind_control("-e", pid)
    counts = [
        int(line.split()[2].replace(",", "")) for line in out.splitlines() if line.strip().startswith("Th ")
    ]
    if not counts:
        raise SystemExit(f"callgrind_control found no counters for pid {pid}:\n{out}")
    return sum(counts)


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def preemptions(pid: int) -> int:
    """Times the process was taken off a CPU while it could still run (CPU contention)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def round_trips(ws_url: str) -> dict[str, float]:
    import httpx

    async with httpx.AsyncClient() as http:
        text = (await http.get(ws_url.replace("ws://", "http://") + "/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("linguamesh_redis_round_trips_total{"):
            op = line.split('op="')[1].split('"')[0]
            out[op] = float(line.rsplit(" ", 1)[1])
    return out


async def redis_info(url: str, section: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        return dict(await r.info(section))
    finally:
        await r.aclose()


async def redis_process(url: str) -> int:
    """The redis-server's pid when it runs on this machine (for its CPU), else 0."""
    pid = int((await redis_info(url, "server"))["process_id"])
    return pid if os.path.exists(f"/proc/{pid}/stat") else 0


async def redis_commands(url: str) -> int:
    stats = await redis_info(url, "commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def database(url: str, number: int) -> str:
    """``url`` with its database number replaced (redis://host:port/N)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))


def ms(v: float) -> str:
    return f"{v * 1000:.3f} ms"


def selection_cost() -> list[str]:
    lines = []
    rng = random.Random(1)
    for n in (10, 1_000, 10_000):
        store = MemoryStateStore()
        langs_sets = [["en", "es"], ["en", "es", "fr"], ["de", "en", "zh"], ["en", "zh"]]
        for i in range(n):
            langs = langs_sets[i % len(langs_sets)]
            caps = NodeCapabilities(
                asr=frozenset(langs),
                nmt=frozenset((a, b) for a in langs for b in langs if a != b),
                tts=frozenset(langs),
            )
            view = NodeView(NodeId(f"n{i}"), caps, 4, reserved=rng.randint(0, 4))
            store.index.put(view)
        req = Request("en", "es", requirements(("asr", "nmt", "tts"), "en", "es"), frozenset())
        for name, fn in (("pooled", select_pooled), ("flat", select_flat)):
            reps = 2000 if name == "pooled" or n <= 1000 else 50
            t = time.perf_counter()
            for _ in range(reps):
                fn(store.index, req, rng)
            per = (time.perf_counter() - t) / reps
            lines.append(f"  selection {name:6} with {n:>6} nodes: {per * 1e6:8.1f} us/job")
    return lines


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--c1-jobs", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=5000, help="jobs in the c64 phase")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per phase at most")
    ap.add_argument("--url", help="use a running scheduler instead of starting one")
    ap.add_argument("--scheduler-arg", action="append", default=[], help="extra scheduler flag")
    ap.add_argument("--redis-url", help="share state in this Redis")
    ap.add_argument("--instances", type=int, choices=(1, 2), default=1)
    ap.add_argument("--rate", type=float, default=1000.0, help="offered jobs/s in the paced phase")
    ap.add_argument("--paced-seconds", type=float, default=4.0, help="length of the paced phase (0: skip)")
    ap.add_argument(
        "--contend",
        action="store_true",
        help="run a busy process beside the scheduler during the c64 phase: one instance under CPU"
        " contention like two instances cause on a 2-core machine (compare the preemptions per job)",
    )
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count the schedulers' instructions per job under valgrind's callgrind (slow; repeatable)",
    )
    ap.add_argument(
        "--tokens",
        action="store_true",
        help="API keys on: sessions open with access tokens, utterances are charged to a key with quotas",
    )
    ap.add_argument(
        "--session-opens", type=int, default=200, help="sessions opened and closed in the last phase"
    )
    ap.add_argument(
        "--callgrind-dir",
        help="with --instructions: keep callgrind's output files here (for callgrind_annotate)",
    )
    ap.add_argument(
        "--separate",
        action="store_true",
        help="with --instances 2: two independent single-instance schedulers (each its own Redis"
        " database, half the nodes and sessions) - the process count and CPU contention of two"
        " instances, but no job crosses between them: the baseline for the cost of crossing",
    )
    args = ap.parse_args()
    if args.instances == 2 and not args.redis_url:
        ap.error("--instances 2 needs --redis-url")
    if args.separate and (args.instances != 2 or args.url):
        ap.error("--separate needs --instances 2 and no --url")
    if args.callgrind_dir and not args.instructions:
        ap.error("--callgrind-dir goes with --instructions")
    wrap: list[str] = []
    tmp = None
    if args.instructions:
        if args.url:
            ap.error("--instructions starts the schedulers itself: no --url")
        if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
            ap.error("--instructions needs valgrind (Debian/Ubuntu: apt-get install valgrind)")
        if args.callgrind_dir:
            out_dir = args.callgrind_dir
            os.makedirs(out_dir, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="lm-bench-")
            out_dir = tmp.name
        wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.%p"]

    token: str | None = None
    keys_args: list[str] = []
    if args.tokens:
        if args.url:
            ap.error("--tokens starts the schedulers itself (with --api-keys): no --url")
        from linguamesh.scheduler.edge.access_tokens import ApiKeys, mint

        keys_dir = tempfile.mkdtemp(prefix="lm-bench-keys-")
        keys_file = os.path.join(keys_dir, "keys")
        with open(keys_file, "w") as f:  # quotas that hold nothing back but are checked
            f.write(
                f"bench {'b' * 40} max_sessions=1000000 audio_seconds_per_hour=1000000000 max_targets=4\n"
            )
        key = ApiKeys.load(keys_file).keys["bench"]
        token = mint(key, "bench", {"speak": True, "view": True, "langs": ["en", "es"]}, ttl=3600)
        keys_args = ["--api-keys", keys_file]

    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    if args.url:
        urls = [args.url]
    else:
        for i in range(args.instances):
            port = free_port()
            extra = list(args.scheduler_arg) + keys_args
            if args.redis_url:
                url = database(args.redis_url, i) if args.separate else args.redis_url
                extra += ["--redis-url", url, "--instance-id", f"bench-{i}"]
            proc = start_scheduler(port, extra, wrap)
            procs.append(proc)
            await wait_port(port, proc, 120.0 if wrap else 15.0)  # valgrind starts slowly
            urls.append(f"ws://127.0.0.1:{port}")
    # crossing: nodes on the first instance, sessions on the last; separate: half on each
    node_urls = urls if args.separate else urls[:1]
    session_urls = urls if args.separate else urls[-1:]
    stats = Stats()
    stop = asyncio.Event()
    node_tasks = []
    slots = max(16, args.concurrency // args.nodes * 2)
    for i in range(args.nodes):
        ready = asyncio.Event()
        node_tasks.append(
            asyncio.create_task(
                SimNode(node_urls[i % len(node_urls)], f"bench-{i}", slots, stats).run(ready, stop)
            )
        )
        await asyncio.wait_for(ready.wait(), 10)
    if len(urls) > 1 and not args.separate:
        await asyncio.sleep(1.5)  # the other instance's node mirror catches up
    try:
        sessions = [SimSession(session_urls[i % len(session_urls)], stats) for i in range(args.sessions)]
        for s in sessions:
            await s.open(token)
        # warm-up
        await run_phase(sessions, 200, 8, 10)
        stats.rtt.clear()
        stats.to_node.clear()
        stats.to_client.clear()

        await run_phase(sessions[:1], args.c1_jobs, 1, args.time_limit)
        c1 = list(stats.rtt)
        c1_node, c1_client = list(stats.to_node), list(stats.to_client)
        stats.rtt.clear()
        stats.to_node.clear()
        stats.to_client.clear()

        busy = (
            subprocess.Popen(  # stops by itself after the phase's time limit
                [
                    sys.executable,
                    "-c",
                    f"import time\nend = time.time() + {args.time_limit + 5}\nwhile time.time() < end: pass",
                ]
            )
            if args.contend
            else None
        )
        if args.callgrind_dir:  # the files then hold the c64 phase alone (callgrind.PID.1)
            for pr in procs:
                callgrind_control("--zero", pr.pid)
        ir0 = [instructions(pr.pid) for pr in procs] if wrap else []
        split0 = [cpu_split(pr.pid) for pr in procs]
        pre0 = [preemptions(pr.pid) for pr in procs]
        own0 = time.process_time()
        redis_pid = await redis_process(args.redis_url) if args.redis_url else 0
        redis0 = cpu_seconds(redis_pid) if redis_pid else 0.0
        rt0 = [await round_trips(u) for u in urls] if args.redis_url else []
        cmd0 = await redis_commands(args.redis_url) if args.redis_url else 0
        elapsed = await run_phase(sessions, args.jobs, args.concurrency, args.time_limit)
        c64 = list(stats.rtt)
        await asyncio.sleep(0.5)  # let stragglers and duplicates arrive
        if busy is not None:
            busy.kill()
            busy.wait()
        ir1 = [instructions(pr.pid) for pr in procs] if wrap else []
        if args.callgrind_dir:
            for pr in procs:
                callgrind_control("--dump=c64", pr.pid)
        split1 = [cpu_split(pr.pid) for pr in procs]
        pre1 = [preemptions(pr.pid) for pr in procs]
        own1 = time.process_time()
        redis1 = cpu_seconds(redis_pid) if redis_pid else 0.0
        rt1 = [await round_trips(u) for u in urls] if args.redis_url else []
        cmd1 = await redis_commands(args.redis_url) if args.redis_url else 0
        paced_cpu: list[float] = []
        paced_jobs = int(args.rate * args.paced_seconds)
        if procs and paced_jobs:
            stats.rtt.clear()
            p0 = [cpu_seconds(pr.pid) for pr in procs]
            paced_elapsed = await run_paced(sessions, paced_jobs, args.rate, args.time_limit)
            paced = list(stats.rtt)
            paced_cpu = [
                (cpu_seconds(pr.pid) - a) / max(len(paced), 1) * 1000 for pr, a in zip(procs, p0, strict=True)
            ]
        sent = len(stats.sent_at)
        got = len(stats.results)
        dup = sum(n - 1 for n in stats.results.values() if n > 1)
        for s in sessions:
            await s.close()
        # sessions opened and closed, one after another (on the sessions' instance)
        sir0 = [instructions(pr.pid) for pr in procs] if wrap else []
        scmd0 = await redis_commands(args.redis_url) if args.redis_url else 0
        opened, open_s = await open_and_close(session_urls[-1], args.session_opens, token, args.time_limit)
        sir1 = [instructions(pr.pid) for pr in procs] if wrap else []
        scmd1 = await redis_commands(args.redis_url) if args.redis_url else 0
    finally:
        stop.set()
        for t in node_tasks:
            t.cancel()
        await asyncio.gather(*node_tasks, return_exceptions=True)
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()

    mode = f"Redis, {args.instances} instance(s)" if args.redis_url else "in-memory state"
    if args.separate:
        mode = "Redis, 2 independent single instances (no job crosses)"
    if args.contend:
        mode += ", a busy process beside it in the c64 phase"
    if args.tokens:
        mode += ", API keys on (access tokens, quotas)"
    names = ("instance 0", "instance 1") if args.separate else ("nodes' instance", "sessions' instance")
    print(f"LinguaMesh dispatch benchmark (loopback, zero-work nodes, {mode})")
    print(
        f"  c1  round trip over {len(c1)} jobs: p50 {ms(pct(c1, 50))}  p90 {ms(pct(c1, 90))}  p99 {ms(pct(c1, 99))}"
    )
    print(
        f"  c{args.concurrency} {len(c64)} jobs in {elapsed:.2f} s: {len(c64) / elapsed:,.0f} jobs/s"
        f"  p50 {ms(pct(c64, 50))}  p99 {ms(pct(c64, 99))}"
    )
    print(
        f"  scheduler overhead (c1): client->node p50 {ms(pct(c1_node, 50))} p99 {ms(pct(c1_node, 99))};"
        f" node->client p50 {ms(pct(c1_client, 50))} p99 {ms(pct(c1_client, 99))}"
    )
    n = max(len(c64), 1)
    if procs:
        each = [(sum(b) - sum(a)) / n * 1000 for a, b in zip(split0, split1, strict=True)]
        split = f" ({names[0]} {each[0]:.3f}, {names[1]} {each[1]:.3f})" if len(each) > 1 else ""
        slowed = " (under callgrind: not comparable)" if wrap else ""
        print(
            f"  scheduler CPU (c{args.concurrency} phase, all instances){slowed}:"
            f" {sum(each):.3f} s per 1,000 jobs{split}"
        )
        if ir0:
            irs = [(b - a) / n for a, b in zip(ir0, ir1, strict=True)]
            split = f" ({names[0]} {irs[0]:,.0f}, {names[1]} {irs[1]:,.0f})" if len(irs) > 1 else ""
            print(
                f"  scheduler instructions (c{args.concurrency} phase, all instances, under callgrind):"
                f" {sum(irs):,.0f} per job{split}"
            )
        user = sum(b[0] - a[0] for a, b in zip(split0, split1, strict=True)) / n * 1000
        system = sum(b[1] - a[1] for a, b in zip(split0, split1, strict=True)) / n * 1000
        pre = ", ".join(f"{(b - a) / n:.2f}" for a, b in zip(pre0, pre1, strict=True))
        print(
            f"    of which user {user:.2f} s, system {system:.2f} s; preemptions per job per instance: {pre}"
        )
        if paced_cpu:
            split = (
                f" ({names[0]} {paced_cpu[0]:.2f}, {names[1]} {paced_cpu[1]:.2f})"
                if len(paced_cpu) > 1
                else ""
            )
            print(
                f"  scheduler CPU at a paced {args.rate:,.0f} jobs/s ({len(paced)} jobs in {paced_elapsed:.2f} s,"
                f" p50 {ms(pct(paced, 50))}): {sum(paced_cpu):.2f} s per 1,000 jobs{split}"
            )
    print(
        f"  load generator CPU (c64 phase, this process: sessions + nodes): {(own1 - own0) / n * 1000:.2f} s per 1,000 jobs"
    )
    if redis_pid:
        print(f"  redis-server CPU (c64 phase): {(redis1 - redis0) / n * 1000:.2f} s per 1,000 jobs")
    if args.redis_url:
        per_op: dict[str, float] = {}
        for before, after in zip(rt0, rt1, strict=True):
            for op, v in after.items():
                per_op[op] = per_op.get(op, 0) + v - before.get(op, 0)
        total = sum(per_op.values())
        detail = ", ".join(f"{op} {v / n:.2f}" for op, v in sorted(per_op.items(), key=lambda x: -x[1]) if v)
        print(f"  Redis round trips per job: {total / n:.2f} ({detail})")
        print(f"  Redis commands per job (INFO commandstats): {(cmd1 - cmd0) / n:.1f}")
    if opened:
        per = max(opened, 1)
        line = f"  sessions opened and closed one after another: {opened} in {open_s:.2f} s, {open_s / per * 1000:.2f} ms each"
        if sir0:
            line += f"; {sum(b - a for a, b in zip(sir0, sir1, strict=True)) / per:,.0f} instructions each"
        if args.redis_url:
            line += f"; {(scmd1 - scmd0) / per:.1f} Redis commands each"
        print(line)
    for line in selection_cost():
        print(line)
    print(f"  sent {sent}  results {got}  lost {sent - got}  duplicated {dup}  failed {stats.failed}")
    if stats.errors:
        print(f"  errors: {stats.errors} (with --url, open the scheduler's intake limits for a load test)")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
