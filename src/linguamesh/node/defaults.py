"""The default offline engine set of a node started without an engine config."""

from __future__ import annotations

from typing import Any


def default_engines() -> list[dict[str, Any]]:
    """Engine configs for ``linguamesh up`` / ``linguamesh node`` without ``--config``.

    Everything here ships inside a pip or Debian package installed by the
    README's set-up commands; nothing is downloaded at run time.
    """
    return [
        {"kind": "webrtc-vad", "aggressiveness": 2},
        {
            "kind": "faster-whisper",
            "model": "bundled:whisper-base",
            "languages": ["en", "es"],
            "preload": True,
        },
        {"kind": "rule-repair", "languages": ["en", "es", "zh"]},
        {"kind": "apertium", "pairs": "installed"},
        {"kind": "piper", "voice": "bundled:joe", "preload": True},
        {"kind": "espeak-ng", "exclude": ["en"]},
    ]
