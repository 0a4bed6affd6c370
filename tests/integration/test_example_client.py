"""``examples/stream_wav.py`` — the Python client's example — against a real scheduler and
node process: it streams a WAV file, prints captions and translations, and resumes when
its socket is cut (resume is the client library's, tested in tests/integration/test_resume_edges.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from linguamesh.audio import to_wav

from ..conftest import pcm
from ..procs import node_proc, scheduler_proc, wait_node

ROOT = Path(__file__).resolve().parents[2]


async def test_the_example_streams_a_file_and_prints_every_translation(tmp_path: Path) -> None:
    # two utterances: speech, a second of silence (the server ends the first), speech
    tone = np.frombuffer(pcm(1.0), dtype="<i2").astype(np.float32) / 32768
    silence = np.zeros(16000, dtype=np.float32)
    wav = tmp_path / "talk.wav"
    wav.write_bytes(to_wav(np.concatenate([tone, silence, tone, silence]), 16000))
    async with scheduler_proc(tmp_path) as (url, _sched), node_proc(tmp_path, url, "example-node"):
        await wait_node(url.replace("ws", "http"), "example-node")
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "stream_wav.py"), str(wav), "--url", url,
             "--speed", "4", "--idle", "3"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("session s-")
    translations = [x for x in lines if x.strip().startswith("→")]
    assert len(translations) >= 1 and "[es]" in translations[0], out.stdout
    assert lines[-1].endswith("translation(s)")


async def test_a_client_written_from_the_protocol_document_alone_is_served(tmp_path: Path) -> None:
    """``examples/minimal_client.py`` uses no LinguaMesh code: only what docs/protocol.md
    says. A real scheduler and node serve it end to end."""
    wav = tmp_path / "one.wav"
    tone = np.frombuffer(pcm(0.5), dtype="<i2").astype(np.float32) / 32768
    wav.write_bytes(to_wav(tone, 16000))
    source = (ROOT / "examples" / "minimal_client.py").read_text()
    assert "linguamesh" not in source.replace("LinguaMesh", "").split('"""', 2)[2]  # no project import
    async with scheduler_proc(tmp_path) as (url, _sched), node_proc(tmp_path, url, "minimal-node"):
        await wait_node(url.replace("ws", "http"), "minimal-node")
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "minimal_client.py"), str(wav), url, "en", "es"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("session s-") and lines[-1] == "closed: client_closed", out.stdout
    assert any(" -> [es] " in x for x in lines), out.stdout
