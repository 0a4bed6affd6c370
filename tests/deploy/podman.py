"""podman for the container tests: build the image (and the stand-ins the compose file
needs), run containers. No image registry is reachable here: the Dockerfile's base image
is made from Debian packages by ``deploy/image/debian-base.sh`` when it is missing, under
the very name the Dockerfile pulls elsewhere. podman runs with ``runc`` and explicit
ulimits (crun cannot start containers on these machines)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PODMAN = shutil.which("podman")
LIMITS = ("nofile=4096:4096", "nproc=4096:4096")
RUNTIME = ["--runtime", "runc", *(a for limit in LIMITS for a in ("--ulimit", limit))]
IMAGE = "localhost/linguamesh:test"

#: what ``.ci/run`` sets: there a missing podman is a failure, not a skip
needs_podman = pytest.mark.skipif(
    PODMAN is None and os.environ.get("LINGUAMESH_CONTAINER_TESTS") != "1",
    reason="podman is not installed (scripts/setup.sh container)",
)


def podman(
    *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if PODMAN is None:
        pytest.fail("podman is not installed: run `scripts/setup.sh container`")
    out = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}… failed ({out.returncode}): {out.stderr[-2000:]}")
    return out


def base_image() -> str:
    """The name the Dockerfile's ``BASE_IMAGE`` defaults to, made here if it is missing."""
    found = re.search(r"^ARG BASE_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert found, "the Dockerfile names its base image in ARG BASE_IMAGE"
    base = found.group(1)
    if podman("image", "exists", base, check=False).returncode != 0:
        started = time.monotonic()
        subprocess.run([str(ROOT / "deploy/image/debian-base.sh"), base], check=True, timeout=600)
        print(f"base image {base} made from Debian packages in {time.monotonic() - started:.0f} s")
    return base


def pip_ca() -> str | None:
    """The CA bundle pip uses on this machine (a proxy that intercepts TLS signs with it)."""
    for path in (os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if path and Path(path).is_file():
            return path
    return None


def build(tag: str, context: Path, dockerfile: Path | None = None) -> float:
    """Build ``tag`` (docker format: podman keeps a HEALTHCHECK only there); seconds taken."""
    base_image()
    secret = ["--secret", f"id=pip-ca,src={ca}"] if (ca := pip_ca()) else []
    file = ["-f", str(dockerfile)] if dockerfile else []
    started = time.monotonic()
    podman("build", "--format", "docker", *RUNTIME, *secret, *file, "-t", tag, str(context), timeout=1200)
    return time.monotonic() - started


def containers_conf(path: Path) -> dict[str, str]:
    """An environment whose podman (and podman-compose's) uses runc and the ulimits."""
    limits = ", ".join(f'"{limit}"' for limit in LIMITS)
    path.write_text(f'[containers]\ndefault_ulimits = [{limits}]\n\n[engine]\nruntime = "runc"\n')
    return {"CONTAINERS_CONF": str(path)}
