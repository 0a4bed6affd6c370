"""A Redis master, one replica and three Sentinels on free loopback ports: real
redis-server processes (``redis-server CONF --sentinel`` is what Debian's
``redis-sentinel`` runs), started and stopped by the tests."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .conftest import free_port
from .procs import die_with_parent
from .redis_server import RedisServer

SERVICE = "mymaster"
#: how long the Sentinels wait before they call a silent master down (ms)
DOWN_AFTER_MS = 1000


def _cli(port: int, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5, check=False
    )
    return out.stdout.strip()


class SentinelSet:
    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup.sh test")
        self.workdir = workdir
        first = RedisServer(workdir / "redis-a")
        second = RedisServer(workdir / "redis-b")
        #: by port: the two data servers (which one is master changes)
        self.servers = {first.port: first, second.port: second}
        self.initial_master = first.port
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def addresses(self) -> str:
        """The ``--redis-sentinels`` value."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def start(self) -> SentinelSet:
        master = self.servers[self.initial_master]
        master.start()
        for port, server in self.servers.items():
            if port != self.initial_master:
                server.extra_args = ("--replicaof", "127.0.0.1", str(master.port))
                server.start()
        for port in self.sentinel_ports:
            self.start_sentinel(port)
        self.wait_synced()
        return self

    def start_sentinel(self, port: int) -> None:
        conf = self.workdir / f"sentinel-{port}.conf"
        if not conf.exists():  # (a restarted Sentinel keeps what it learnt: the file is rewritten)
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.initial_master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
        self.sentinels[port] = subprocess.Popen(
            [shutil.which("redis-sentinel") or "redis-server", str(conf), "--sentinel"]
            if shutil.which("redis-sentinel") is None
            else ["redis-sentinel", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis sentinel did not start")

    def master_port(self, sentinel: int | None = None) -> int | None:
        """The master's port as a live Sentinel names it."""
        for port in [sentinel] if sentinel else self.sentinel_ports:
            if port in self.sentinels and self.sentinels[port].poll() is None:
                reply = _cli(port, "SENTINEL", "get-master-addr-by-name", SERVICE).split()
                if len(reply) == 2:
                    return int(reply[1])
        return None

    def wait_synced(self, timeout: float = 20.0) -> None:
        """Until the master has its replica in sync and every live Sentinel knows both."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            master = self.master_port()
            if master is not None and "connected_slaves:1" in _cli(master, "INFO", "replication"):
                known = [
                    _cli(p, "SENTINEL", "replicas", SERVICE).count("flags") >= 1
                    for p, proc in self.sentinels.items() if proc.poll() is None
                ]  # fmt: skip
                if all(known):
                    return
            time.sleep(0.1)
        raise TimeoutError("the replica never synced")

    def kill_master(self) -> int:
        port = self.master_port()
        assert port is not None
        self.servers[port].stop()  # SIGKILL
        return port

    def signal_master(self, sig: signal.Signals) -> int:
        port = self.master_port()
        assert port is not None
        proc = self.servers[port].proc
        assert proc is not None
        proc.send_signal(sig)
        return port

    def wait_failover(self, old: int, timeout: float = 30.0) -> float:
        """Until every live Sentinel names the same master, not ``old``, for a second in a
        row (a failover can be tried and abandoned); returns the monotonic time it was first
        named."""
        deadline = time.monotonic() + timeout
        since: tuple[int, float] | None = None
        while time.monotonic() < deadline:
            named = {self.master_port(p) for p, proc in self.sentinels.items() if proc.poll() is None}
            now = named.pop() if len(named) == 1 else None
            if now is None or now == old:
                since = None
            elif since is None or since[0] != now:
                since = (now, time.monotonic())
            elif time.monotonic() - since[1] >= 1.0:
                return since[1]
            time.sleep(0.05)
        raise TimeoutError("no failover")

    def restart(self, port: int) -> None:
        """Start a killed data server again, on its port, empty (the Sentinels make it a replica)."""
        server = self.servers[port]
        server.extra_args = ()
        server.start()

    def kill_sentinel(self, port: int) -> None:
        proc = self.sentinels.pop(port)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.sentinels.values():
            proc.kill()
            proc.wait()
        self.sentinels.clear()
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
