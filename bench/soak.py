"""Fault-injection soak: a real cluster under load while its parts fail, bounded in time.

    python bench/soak.py                      # the full run: 10 minutes
    python bench/soak.py --duration 90        # the short run CI does
    python bench/soak.py --duration 90 --json # one JSON line at the end (for tests)

Starts redis-server, two scheduler instances (A, B) sharing it, several node processes
(test engines with realistic per-stage delays, each dialling both instances) and many
client sessions (half start on A, half on B) that speak utterances at a steady pace.
While they talk it works through a schedule of faults, one at a time, over and over:

  node-kill       SIGKILL a node, start it again 2 s later
  node-drain      SIGTERM a node (it drains), start it again once it exited
  instance-kill   SIGKILL instance A, start it again (same id and port) 2 s later
  redis-stall     SIGSTOP redis-server for 3 s, then SIGCONT
  redis-restart   restart redis-server empty (no persistence)
  client-drop     cut half the clients' sockets (they resume, on either instance)
  instance-drain  SIGTERM instance B (it drains), start it again once it exited
  master-kill     (with --sentinel) SIGKILL the Redis master; once the Sentinels promoted
                  the replica, start the old master again (it rejoins as a replica)

With --sentinel the instances share a Redis master with one replica and three Sentinels
(``--redis-sentinels``) instead of one redis-server, and the default schedule replaces
the redis-* faults with master-kill.

Every utterance is booked (``tests/fleet.py``): its result, or an error naming it. It
prints sent, ok, failed by code, lost (no outcome: must be 0), duplicated (more than
one: must be 0), p50/p99 latency of the utterances whose time in flight lies outside
every fault window (a fault and the 5 s after it), and the RSS of every process at the start and at the end. Exits
1 when anything was lost or duplicated. All traffic stays on 127.0.0.1; the processes
are stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.fleet import Fleet, Speaker, tally  # noqa: E402
from tests.sentinel_set import SentinelSet  # noqa: E402

FLAGS = ("--pending-timeout", "15", "--ack-timeout", "3", "--result-timeout", "10", "--drain-timeout", "10")
SETTLE = 5.0  # seconds after a fault still counted as its window


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.sentinels = SentinelSet(workdir / "redis") if args.sentinel else None
        self.fleet = Fleet(workdir, measure=False, redis=self.sentinels is None)
        self.speakers: list[Speaker] = []
        self.windows: list[tuple[float, float]] = []
        self.faults: list[dict[str, object]] = []
        self.rng = random.Random(args.seed)
        self.stop_talking = asyncio.Event()

    async def start(self) -> dict[str, float]:
        f = self.fleet
        await f.__aenter__()
        store: tuple[str, ...] = ()
        if self.sentinels is not None:
            await asyncio.to_thread(self.sentinels.start)
            store = ("--redis-sentinels", self.sentinels.addresses)
        a = await f.scheduler("A", *FLAGS, *store, *(("--instance-id", "A") if store else ()))
        b = await f.scheduler("B", *FLAGS, *store, *(("--instance-id", "B") if store else ()))
        for i in range(self.args.nodes):
            urls = [a.url, b.url] if i % 2 == 0 else [b.url, a.url]
            f.node(f"n{i}", urls, delay_ms=self.rng.choice((80, 120, 160)), slots=4)
        for i in range(self.args.nodes):
            await f.wait_node("A", f"n{i}")
            await f.wait_node("B", f"n{i}")
        for i in range(self.args.sessions):
            urls = [a.url, b.url] if i % 2 == 0 else [b.url, a.url]
            s = Speaker(urls, f"s{i}")
            await s.start()
            self.speakers.append(s)
        return f.rss()

    async def talk(self, speaker: Speaker) -> None:
        every = 1.0 / self.args.rate
        await asyncio.sleep(self.rng.uniform(0, every))
        while not self.stop_talking.is_set():
            await speaker.say()
            await asyncio.sleep(every * self.rng.uniform(0.7, 1.3))

    # ------------------------------------------------------------------ faults

    async def _restart_when_exited(self, name: str, start: Callable[[], Awaitable[None] | None]) -> None:
        code = await asyncio.to_thread(self.fleet.wait_exit, name, 30)
        if code is None:  # did not drain in time: stop it the hard way
            self.fleet.signal(name, signal.SIGKILL)
            await asyncio.to_thread(self.fleet.wait_exit, name, 10)
        out = start()
        if out is not None:
            await out

    async def fault(self, kind: str) -> None:
        f = self.fleet
        node = f"n{self.rng.randrange(self.args.nodes)}"
        if kind == "node-kill":
            f.signal(node, signal.SIGKILL)
            await asyncio.to_thread(f.wait_exit, node, 10)
            await asyncio.sleep(2)
            f.start_node(node)
        elif kind == "node-drain":
            f.signal(node, signal.SIGTERM)
            await self._restart_when_exited(node, lambda: f.start_node(node))
        elif kind == "instance-kill":
            f.signal("A", signal.SIGKILL)
            await asyncio.to_thread(f.wait_exit, "A", 10)
            await asyncio.sleep(2)
            await f.start_scheduler("A")
        elif kind == "redis-stall":
            f.signal("redis", signal.SIGSTOP)
            await asyncio.sleep(3)
            f.signal("redis", signal.SIGCONT)
        elif kind == "redis-restart":
            f.restart_redis_empty()
        elif kind == "client-drop":
            for s in self.speakers[::2]:
                s.drop()
        elif kind == "instance-drain":
            f.signal("B", signal.SIGTERM)
            await self._restart_when_exited("B", lambda: f.start_scheduler("B"))
        elif kind == "master-kill":
            ss = self.sentinels
            if ss is None:
                raise ValueError("master-kill needs --sentinel")
            old = ss.kill_master()
            await asyncio.to_thread(ss.wait_failover, old)
            ss.restart(old)
            await asyncio.to_thread(ss.wait_synced)
        else:
            raise ValueError(kind)

    async def inject(self, until: float) -> None:
        kinds = [k for k in self.args.faults.split(",") if k]
        gap = self.args.fault_every
        i = 0
        await asyncio.sleep(min(gap, max(0.0, until - time.monotonic())))
        while time.monotonic() + gap / 2 < until:
            kind = kinds[i % len(kinds)]
            i += 1
            t0 = time.monotonic()
            print(f"  [{t0 - self.t_start:6.1f}s] {kind}", file=sys.stderr, flush=True)
            try:
                await self.fault(kind)
                ok = True
            except Exception as exc:
                print(f"    could not inject {kind}: {exc!r}", file=sys.stderr)
                ok = False
            t1 = time.monotonic()
            self.windows.append((t0, t1 + SETTLE))
            self.faults.append(
                {"fault": kind, "at_s": round(t0 - self.t_start, 1), "took_s": round(t1 - t0, 1), "ok": ok}
            )
            await asyncio.sleep(max(0.0, gap - (t1 - t0)))

    async def run(self) -> dict[str, object]:
        rss_start = await self.start()
        self.t_start = time.monotonic()
        until = self.t_start + self.args.duration
        talkers = [asyncio.create_task(self.talk(s)) for s in self.speakers]
        await self.inject(until)
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        self.stop_talking.set()
        await asyncio.gather(*talkers)
        settle_end = time.monotonic() + self.args.settle
        for s in self.speakers:
            await s.settle(max(0.1, settle_end - time.monotonic()))
        rss_end = self.fleet.rss()
        for s in self.speakers:
            await s.stop()
        t = tally(self.speakers, self.windows)
        lat = sorted(t.latencies)
        pct = (
            (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1))
            if lat
            else (lambda q: None)
        )
        return {
            "duration_s": self.args.duration,
            "sentinel": self.sentinels is not None,
            "sessions": self.args.sessions,
            "nodes": self.args.nodes,
            "sent": t.sent,
            "ok": t.ok,
            "failed": t.failed,
            "lost": t.lost,
            "duplicated": t.duplicated,
            "unattributed_errors": t.unattributed,
            "sessions_restarted": sum(s.abandoned for s in self.speakers),
            "reconnects": sum(s.reconnects for s in self.speakers),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "latency_samples": len(lat),
            "duplicates": [
                {
                    "session": s.name,
                    "session_id": s.session_ids.get(k[0], ""),
                    "utterance": list(k),
                    "outcomes": o.ends,
                }
                for s in self.speakers
                for k, o in s.outcomes.items()
                if len(o.ends) > 1
            ][:20],
            "lost_utterances": [
                {"session": s.name, "session_id": s.session_ids.get(k[0], ""), "utterance": list(k)}
                for s in self.speakers
                for k, o in s.outcomes.items()
                if not o.ends
            ][:20],
            "faults": self.faults,
            "rss_mb_start": rss_start,
            "rss_mb_end": rss_end,
        }

    def close(self) -> None:
        self.fleet.close()
        if self.sentinels is not None:
            self.sentinels.stop()


def report(r: dict[str, object]) -> None:
    redis = "Redis with Sentinel" if r.get("sentinel") else "Redis"
    print(f"soak: {r['duration_s']} s, {r['sessions']} sessions, {r['nodes']} nodes, 2 instances on {redis}")
    print(f"  faults: {', '.join(str(f['fault']) for f in r['faults'])}")  # type: ignore[union-attr]
    print(f"  sent {r['sent']}  ok {r['ok']}  failed {r['failed']}")
    print(f"  lost {r['lost']}  duplicated {r['duplicated']}  (both must be 0)")
    print(f"  unattributed errors {r['unattributed_errors']}")
    for d in r["duplicates"]:  # type: ignore[attr-defined]
        print(f"    duplicated: {d}")
    for d in r["lost_utterances"]:  # type: ignore[attr-defined]
        print(f"    lost: {d}")
    print(
        f"  client reconnects {r['reconnects']}  sessions that had to start again {r['sessions_restarted']}"
    )
    print(
        f"  latency outside fault windows: p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms ({r['latency_samples']} utterances)"
    )
    start, end = r["rss_mb_start"], r["rss_mb_end"]
    for name in sorted(set(start) | set(end)):  # type: ignore[arg-type]
        print(f"  RSS {name:>6}: {start.get(name, '-')} -> {end.get(name, '-')} MB")  # type: ignore[union-attr]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of talking (default 600)")
    ap.add_argument("--sessions", type=int, default=12)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rate", type=float, default=1.0, help="utterances per second per session")
    ap.add_argument("--fault-every", type=float, default=12.0, help="seconds between faults")
    ap.add_argument(
        "--faults",
        help="the schedule, cycled (default: node-kill,redis-stall,client-drop,instance-kill,node-drain,"
        "redis-restart,instance-drain; with --sentinel: node-kill,master-kill,client-drop,instance-kill,"
        "node-drain,master-kill,instance-drain)",
    )
    ap.add_argument(
        "--sentinel", action="store_true", help="a Redis master, a replica and three Sentinels (master-kill)"
    )
    ap.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the last outcomes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of the report")
    ap.add_argument("--keep", action="store_true", help="keep the logs (their folder is printed)")
    ap.add_argument(
        "--keep-on-failure",
        action="store_true",
        help="keep the logs when something was lost or duplicated (their folder is in the result's `logs`)",
    )
    args = ap.parse_args()
    if args.faults is None:
        redis_faults = ("master-kill", "master-kill") if args.sentinel else ("redis-stall", "redis-restart")
        args.faults = f"node-kill,{redis_faults[0]},client-drop,instance-kill,node-drain,{redis_faults[1]},instance-drain"
    if shutil.which("redis-server") is None:
        print("redis-server is not installed: run scripts/setup.sh test", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="linguamesh-soak-"))
    soak = Soak(args, workdir)
    result: dict[str, object] = {}
    try:
        result = await soak.run()
    finally:
        soak.close()
        failed = not result or result["lost"] or result["duplicated"]
        if args.keep or (args.keep_on_failure and failed):
            print(f"logs: {workdir}", file=sys.stderr)
            result["logs"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 1 if result["lost"] or result["duplicated"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main()))
