from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from linguamesh.engines.models import ModelManager
from linguamesh.engines.registry import EngineSet, build
from linguamesh.node.defaults import default_engines


def espeak_wav(text: str, voice: str = "en-us", wpm: int = 175) -> bytes:
    return subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text], capture_output=True, check=True
    ).stdout


@pytest.fixture(scope="session")
def default_set() -> Iterator[EngineSet]:
    es = build(default_engines(), ModelManager(), strict=True)
    yield es
    es.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from .tiny_models import build_tiny_model

    base = tmp_path_factory.mktemp("ct2")
    return {fam: build_tiny_model(base / fam, fam) for fam in ("nllb", "m2m100", "opus-mt")}
