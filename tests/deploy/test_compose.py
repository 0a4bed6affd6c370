"""``deploy/compose.yaml`` brought up for real with podman-compose: Redis, two schedulers
from the image, a node and nginx; a real utterance goes through nginx with an access
token, and both schedulers answer for one session.

No image registry is reachable here, so the Redis and nginx images the file names are
stand-ins built from Debian's packages (``standins/``) under those names, as the base
image is (``podman.py``). Marked ``container``: ``.ci/run`` runs it after the everyday suite.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from linguamesh.client import SessionClient
from linguamesh.scheduler.edge.access_tokens import ApiKeys, mint

from ..conftest import free_port
from ..engines.conftest import espeak_wav
from .podman import ROOT, build, containers_conf, needs_podman, podman

pytestmark = [pytest.mark.container, pytest.mark.timeout(1500), needs_podman]

COMPOSE = ROOT / "deploy" / "compose.yaml"
STANDINS = Path(__file__).parent / "standins"
COMPOSE_BIN = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")


def named_image(service: str) -> str:
    """The image a service of the compose file names (a ``${VAR:-default}`` gives its default)."""
    raw = yaml.safe_load(COMPOSE.read_text())["services"][service]["image"]
    return re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", raw)


@pytest.fixture(scope="module")
def standins() -> None:
    for service in ("redis", "nginx"):
        name = named_image(service)
        if podman("image", "exists", name, check=False).returncode != 0:
            seconds = build(name, STANDINS, STANDINS / f"{service}.Dockerfile")
            print(f"stand-in {name} built in {seconds:.0f} s")


def test_the_file_is_what_the_docs_say() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"redis", "scheduler-a", "scheduler-b", "node", "nginx"}
    for name in ("scheduler-a", "scheduler-b", "node"):
        # a drain (30 s) fits in the grace period before SIGKILL
        assert int(services[name]["stop_grace_period"].rstrip("s")) >= 30 + 10
    # only nginx is published, and only on loopback
    assert [s for s in services if "ports" in services[s]] == ["nginx"]
    assert services["nginx"]["ports"][0].startswith("127.0.0.1:")


async def test_compose_serves_an_utterance_through_nginx(image: str, standins: None, tmp_path: Path) -> None:
    key_secret = secrets.token_hex(32)
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o755)
    (secret_dir / "api-keys").write_text(f"k1 {key_secret}\n")
    (secret_dir / "api-keys").chmod(0o644)  # read by the image's user (uid 10001)
    port = free_port()
    project = f"lm{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        **containers_conf(tmp_path / "containers.conf"),
        "LINGUAMESH_IMAGE": image,
        "LINGUAMESH_NODE_TOKEN": secrets.token_hex(24),
        "LINGUAMESH_SECRETS_DIR": str(secret_dir),
        "LINGUAMESH_HTTP_PORT": str(port),
    }

    def compose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [COMPOSE_BIN, "-p", project, "-f", str(COMPOSE), *args],
            capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip

    up = compose("up", "-d")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        for service in ("scheduler-a", "scheduler-b", "node"):  # the image's HEALTHCHECK
            await until(lambda s=service: healthy(project, s), 180, f"{service} never became healthy")
        await until(lambda: ready(f"http://127.0.0.1:{port}"), 60, "no scheduler ready behind nginx")
        await until(lambda: node_registered(project), 60, "the node never registered")

        token = mint(
            ApiKeys.load(str(secret_dir / "api-keys")).keys["k1"], "compose-test", {"speak": True}, 600
        )
        ref = "Good morning. I would like to buy two tickets to the museum, please."
        c = SessionClient(f"ws://127.0.0.1:{port}", src="en", tgt="es", audio_format="wav")
        c.init.token = token
        async with c:
            await c.send_utterance(0, espeak_wav(ref))
            r = await c.next_result(120)
            # nginx spreads connections: resume a few times; any instance answers for the session
            for _ in range(3):
                await c.disconnect()
                await c.resume()
        assert r.status == "ok", r.error
        assert "museo" in r.text_translated, r.text_translated
        assert r.tts_audio and r.tts_audio[:4] == b"RIFF"
    finally:
        for name in names(project):
            out = podman("logs", name, check=False)
            (tmp_path / f"{name}.log").write_text(out.stdout + out.stderr)
        down = compose("down", "-v", "-t", "5")
        print(f"compose down: {down.returncode}")


async def ready(base: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{base}/readyz", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


def names(project: str) -> list[str]:
    out = podman(
        "ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"
    )
    return out.stdout.split()


async def healthy(project: str, service: str) -> bool:
    name = next(n for n in names(project) if f"_{service}_" in n)
    return podman("healthcheck", "run", name, check=False).returncode == 0


async def node_registered(project: str) -> bool:
    logs = [podman("logs", n, check=False) for n in names(project) if "scheduler" in n]
    return any("node.registered" in out.stdout + out.stderr for out in logs)


async def until(check: object, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(1)
    raise AssertionError(message)
