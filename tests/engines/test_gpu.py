"""On a GPU (skipped elsewhere; the test machines have none): the bundled Whisper base
decodes on ``cuda`` with the GPU options, and its cost in the node's GPU budget is what
the device measured, not the file's size."""

from __future__ import annotations

import pytest

from linguamesh.engines.device_memory import used_bytes
from linguamesh.engines.models import ModelManager
from linguamesh.node.hardware import gpus
from linguamesh.quality import wer

from .conftest import espeak_wav
from .test_adapters import NO_STOP, speech


def cuda_devices() -> int:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except (ImportError, RuntimeError):
        return 0


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not gpus() or cuda_devices() == 0, reason="no GPU (nvidia-smi and CUDA) on this machine"
    ),
]


def test_whisper_on_the_gpu_is_measured_on_the_device() -> None:
    from linguamesh.engines.whisper import FasterWhisperASR

    before = used_bytes(0)
    models = ModelManager(gpu_limit_bytes=24 * 2**30)
    cfg = {"model": "bundled:whisper-base", "languages": ["en"], "device": "cuda", "device_index": 0}
    asr = FasterWhisperASR({**cfg, "compute_type": "float16", "num_workers": 2, "beam_size": 2}, models)
    ref = "I would like to buy two tickets to the museum, please."
    assert wer(ref, asr._transcribe(speech(espeak_wav(ref)), "en", None, NO_STOP)) <= 0.25
    snap = models.snapshot()[asr.key]
    assert snap["gpu"] == 0 and snap["memory_mb"] > 0
    assert before is not None and models.gpu_used_bytes(0) > 0
    assert models.used_bytes == 0  # nothing counted in host memory
