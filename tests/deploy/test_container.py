"""The container image, built from the repository's ``Dockerfile`` and run with podman.

Redis (a server on loopback), two schedulers and a node from the image serve a real
utterance with the default offline engines; then SIGTERM drains a scheduler container
and a node container (a rolling upgrade: a new node takes over) while three speakers
talk, and nothing is lost or duplicated. The image's HEALTHCHECK is run for both roles.

Marked ``container`` (``scripts/test.sh`` leaves it out; ``.ci/run`` runs it after the
everyday suite); how the image is built here: ``podman.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from linguamesh.client import SessionClient

from ..conftest import free_port
from ..engines.conftest import espeak_wav
from ..fleet import Speaker, finish
from ..redis_server import RedisServer
from .podman import RUNTIME, needs_podman, podman

pytestmark = [pytest.mark.container, pytest.mark.timeout(1500), needs_podman]


class Containers:
    """Containers of one test, on the host's network (every server binds 127.0.0.1)."""

    def __init__(self, image: str, logs: Path) -> None:
        self.image = image
        self.logs = logs
        self.prefix = f"lm-{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []

    def run(self, name: str, *args: str, env: dict[str, str] | None = None) -> str:
        full = f"{self.prefix}-{name}"
        env_args = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        podman("run", "-d", "--name", full, "--network", "host", *RUNTIME, *env_args, self.image, *args)
        self.names.append(full)
        return full

    async def healthy(self, name: str, timeout: float = 120) -> None:
        """Until the image's HEALTHCHECK passes in the container (fails if it exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if podman("healthcheck", "run", name, check=False).returncode == 0:
                return
            if self.state(name) != "running":
                raise AssertionError(f"{name} exited:\n{self.log(name)[-3000:]}")
            await asyncio.sleep(1)
        raise AssertionError(f"{name} never became healthy:\n{self.log(name)[-3000:]}")

    def state(self, name: str) -> str:
        return podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()

    def log(self, name: str) -> str:
        out = podman("logs", name, check=False)
        return out.stdout + out.stderr

    def wait(self, name: str, timeout: float = 90) -> int:
        return int(podman("wait", name, timeout=timeout).stdout.strip())

    def close(self) -> None:
        for name in self.names:
            (self.logs / f"{name}.log").write_text(self.log(name))
            podman("rm", "-f", "-t", "0", name, check=False)


async def test_the_image_serves_and_drains_without_losing(image: str, tmp_path: Path) -> None:
    started = time.monotonic()
    redis = RedisServer(tmp_path / "redis").start()
    boxes = Containers(image, tmp_path)
    try:
        ports = [free_port(), free_port()]
        urls = [f"ws://127.0.0.1:{p}" for p in ports]
        for i, port in enumerate(ports):
            boxes.run(
                f"scheduler{i}",
                "scheduler", "--host", "127.0.0.1", "--redis-url", redis.url, "--heartbeat-interval", "0.5",
                "--pending-timeout", "120", "--drain-timeout", "20", "--log-format", "json",
                # the port from the environment, as the HEALTHCHECK reads it; no node port here
                env={"LINGUAMESH_PORT": str(port), "LINGUAMESH_NODE_METRICS_PORT": "0"},
            )  # fmt: skip
        node_env = {
            "LINGUAMESH_NODE_METRICS_HOST": "127.0.0.1",
            "LINGUAMESH_NODE_METRICS_PORT": str(free_port()),
        }
        node = boxes.run(
            "node0", "node", *(a for u in urls for a in ("--scheduler", u)), "--node-id", "box-node-0",
            "--max-concurrent-jobs", "2", "--drain-timeout", "60", env=node_env,
        )  # fmt: skip
        for name in boxes.names:
            await boxes.healthy(name)
        # not root inside; the HEALTHCHECK is in the image
        assert podman("exec", node, "id", "-u").stdout.strip() == "10001"
        check = json.loads(podman("image", "inspect", image).stdout)[0]["Healthcheck"]
        assert check["Test"][-1] == "healthcheck", check
        await wait_for_node(ports[0], "box-node-0")

        # a real utterance, end to end with the default offline engines
        ref = "Good morning. I would like to buy two tickets to the museum, please."
        async with SessionClient(urls[0], src="en", tgt="es", audio_format="wav") as c:
            await c.send_utterance(0, espeak_wav(ref))
            r = await c.next_result(120)
        assert r.status == "ok", r.error
        assert "museum" in r.text_asr.lower() and "museo" in r.text_translated, (
            r.text_asr,
            r.text_translated,
        )
        assert r.tts_audio and r.tts_audio[:4] == b"RIFF"

        # SIGTERM a scheduler, then the node, while three speakers talk; a new node takes over
        speakers = [Speaker(urls, f"box{i}", seconds=0.5) for i in range(3)]
        for s in speakers:
            await s.start()
        for round_ in range(24):
            for s in speakers:
                await s.say()
            if round_ == 6:
                podman("kill", "--signal", "TERM", boxes.names[0])
            if round_ == 12:
                podman("kill", "--signal", "TERM", node)
                boxes.run(
                    "node1", "node", *(a for u in urls for a in ("--scheduler", u)), "--node-id", "box-node-1",
                    "--max-concurrent-jobs", "2", env={**node_env, "LINGUAMESH_NODE_METRICS_PORT": str(free_port())},
                )  # fmt: skip
            await asyncio.sleep(0.25)
        t = await finish(speakers, 240)
        assert t.ok == t.sent == 72, t.line()
        assert sum(s.reconnects for s in speakers) >= 3  # each speaker moved to the other instance

        # both drained and exited by themselves, cleanly
        assert boxes.wait(boxes.names[0]) == 0, boxes.log(boxes.names[0])[-3000:]
        assert boxes.wait(node, 120) == 0, boxes.log(node)[-3000:]
        sched_log = boxes.log(boxes.names[0])
        assert "scheduler.drained" in sched_log and "node.signal" in boxes.log(node), sched_log[-3000:]
        print(f"container test: {time.monotonic() - started:.0f} s after the build; {t.line()}")
    finally:
        boxes.close()
        redis.stop()


async def wait_for_node(port: int, node_id: str, timeout: float = 60) -> None:
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = (await http.get(f"http://127.0.0.1:{port}/api/v1/nodes")).json()["nodes"]
            if any(n["node_id"] == node_id for n in nodes):
                return
            await asyncio.sleep(0.5)
    raise AssertionError(f"{node_id} never registered")
