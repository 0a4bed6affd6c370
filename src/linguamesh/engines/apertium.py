"""Rule-based MT with Apertium through persistent null-flush pipelines.

Starting ``apertium`` per sentence costs ~128 ms; a pipeline kept running with
``-z`` (null flush) on every stage costs ~1.5 ms per sentence. The
``apertium`` wrapper script hangs with ``-z``, so the pipeline is built from
``/usr/share/apertium/modes/<pair>.mode`` directly: each program gets ``-z``,
``$1`` becomes ``-n`` (no unknown-word marks) and the text goes in already
in Apertium stream format (special characters escaped), one translation per
NUL-terminated block.

Mode names are ``eng-spa``/``spa-eng`` for newer pairs and ``es-pt``/``fr-es``
for older ones; both map to ISO 639-1 codes here.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .base import Cancelled, EngineError, MTEngine
from .models import ModelManager

MODES_DIR = Path("/usr/share/apertium/modes")

#: ISO 639-3/2 codes used in Apertium mode names -> ISO 639-1.
CODES = {
    "eng": "en", "spa": "es", "cat": "ca", "por": "pt", "fra": "fr", "fre": "fr", "epo": "eo",
    "glg": "gl", "ita": "it", "oci": "oc", "arg": "an", "ast": "ast", "eus": "eu", "deu": "de",
    "nld": "nl", "afr": "af", "nob": "nb", "nno": "nn", "swe": "sv", "dan": "da", "isl": "is",
    "ron": "ro", "rus": "ru", "ukr": "uk", "bel": "be", "pol": "pl", "ces": "cs", "slk": "sk",
    "hbs": "sh", "slv": "sl", "mkd": "mk", "bul": "bg", "kaz": "kk", "tat": "tt", "eng_US": "en",
}  # fmt: skip
_ESCAPE = re.compile(r"([\[\]^$/<>@\\{}*#+|~])")
READ_TIMEOUT = 10.0


def from_stream(raw: str) -> str:
    """Apertium stream format to plain text: drop [superblanks], unescape \\x."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "\\" and i + 1 < n:
            out.append(raw[i + 1])
            i += 2
        elif c == "[":
            i += 1
            while i < n and raw[i] != "]":
                i += 2 if raw[i] == "\\" else 1
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out).strip()


def _iso(code: str) -> str | None:
    if code in CODES:
        return CODES[code]
    return code if len(code) == 2 else None


def installed_pairs(modes_dir: Path = MODES_DIR) -> dict[tuple[str, str], Path]:
    """(src, tgt) -> mode file, for every plain translation mode installed."""
    pairs: dict[tuple[str, str], Path] = {}
    if not modes_dir.is_dir():
        return pairs
    for mode in sorted(modes_dir.glob("*.mode")):
        parts = mode.stem.split("-")
        if len(parts) != 2:
            continue  # debugging modes like eng-spa-tagger
        src, tgt = _iso(parts[0]), _iso(parts[1])
        if src and tgt and "_" not in parts[1]:
            pairs.setdefault((src, tgt), mode)
    return pairs


def pipeline_command(mode_file: Path) -> str:
    text = mode_file.read_text().strip().replace("$1", "-n").replace("$2", "")
    stages = []
    for stage in text.split("|"):
        argv = shlex.split(stage)
        if not argv:
            raise EngineError(f"{mode_file}: empty stage in mode file", retryable=False)
        stages.append(shlex.join([argv[0], "-z", *argv[1:]]))
    return " | ".join(stages)


class _Pipeline:
    def __init__(self, mode: Path) -> None:
        self.mode = mode
        self.cmd = pipeline_command(mode)
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["bash", "-c", self.cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            start_new_session=True,
        )
        self.proc = proc
        return proc

    def translate(self, text: str, stop: threading.Event) -> str:
        with self.lock:
            proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(_ESCAPE.sub(r"\\\1", text).encode() + b"\n\0")
                proc.stdin.flush()
                out = b""
                deadline = time.monotonic() + READ_TIMEOUT
                fd = proc.stdout.fileno()
                while not out.endswith(b"\0"):
                    if stop.is_set():
                        self.close()  # the pipeline holds a half-read answer: restart it
                        raise Cancelled()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.close()
                        raise EngineError(f"apertium {self.mode.stem} gave no answer in {READ_TIMEOUT:g}s")
                    ready, _, _ = select.select([fd], [], [], min(left, 0.1))
                    if ready:
                        chunk = os.read(fd, 65536)
                        if not chunk:
                            self.close()
                            raise EngineError(f"apertium {self.mode.stem} pipeline exited")
                        out += chunk
            except BrokenPipeError:
                self.close()
                raise EngineError(f"apertium {self.mode.stem} pipeline exited") from None
        return from_stream(out[:-1].decode("utf-8", "replace"))

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait()
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()


class ApertiumMT(MTEngine):
    name = "apertium"

    def __init__(self, cfg: dict[str, Any], models: ModelManager) -> None:
        modes_dir = Path(cfg.get("modes_dir", MODES_DIR))
        available = installed_pairs(modes_dir)
        wanted = cfg.get("pairs", "installed")
        if wanted == "installed":
            chosen = available
        else:
            chosen = {}
            for item in wanted:
                src, _, tgt = item.partition("-") if isinstance(item, str) else (item[0], "-", item[1])
                pair = (src, tgt)
                if pair not in available:
                    have = ", ".join(f"{a}-{b}" for a, b in sorted(available)) or "none"
                    raise EngineError(
                        f"apertium pair {'-'.join(pair)} is not installed (installed: {have}); "
                        f"apt-get install apertium-<pair>",
                        retryable=False,
                    )
                chosen[pair] = available[pair]
        if not chosen:
            raise EngineError(
                f"no Apertium language pairs installed in {modes_dir} (apt-get install apertium-eng-spa)",
                retryable=False,
            )
        self.models = models
        self._pipelines = {pair: _Pipeline(mode) for pair, mode in chosen.items()}

    def pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._pipelines)

    def _translate(self, text: str, src: str, tgt: str, stop: threading.Event) -> str:
        pipe = self._pipelines.get((src, tgt))
        if pipe is None:
            raise EngineError(f"apertium has no {src}-{tgt} pair", "unsupported_language_pair", False)
        key = f"apertium:{pipe.mode.stem}"
        self.models.stats(key)
        with self.models.inference(key):
            return pipe.translate(text, stop)

    def close(self) -> None:
        for pipe in self._pipelines.values():
            pipe.close()
