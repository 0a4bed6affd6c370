from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from linguamesh.engines.models import ModelLoadError, ModelManager


def test_lru_eviction_under_memory_threshold() -> None:
    closed: list[str] = []
    mm = ModelManager(memory_limit_bytes=250)
    mm.get("a", lambda: "A", 100, closed.append)
    mm.get("b", lambda: "B", 100, closed.append)
    mm.get("a", lambda: "A2", 100)  # hit: a becomes most recently used
    mm.get("c", lambda: "C", 100, closed.append)  # 300 > 250: evict b (least recently used)
    assert mm.loaded() == ["a", "c"] and closed == ["B"]
    assert mm.get("a", lambda: "reloaded", 100) == "A"
    snap = mm.snapshot()
    assert snap["a"]["cache_hits"] == 2 and snap["a"]["loads"] == 1
    assert snap["b"]["unloads"] == 1 and snap["b"]["loaded"] == 0
    assert mm.used_bytes == 200


def test_model_bigger_than_limit_still_loads_alone() -> None:
    mm = ModelManager(memory_limit_bytes=10)
    mm.get("a", lambda: 1, 5)
    mm.get("big", lambda: 2, 50)
    assert mm.loaded() == ["big"]


def test_load_errors_are_wrapped_and_counted() -> None:
    mm = ModelManager()

    def boom() -> None:
        raise RuntimeError("bad header")

    with pytest.raises(ModelLoadError, match="m: RuntimeError: bad header"):
        mm.get("m", boom, 1)
    assert mm.snapshot()["m"]["errors"] == 1


def test_inference_metrics() -> None:
    mm = ModelManager()
    for i in range(20):
        with mm.inference("m"):
            time.sleep(0.03 if i >= 18 else 0.001)  # two slow inferences among twenty
    st = mm.snapshot()["m"]
    assert st["inferences"] == 20 and st["errors"] == 0
    assert 1 <= st["mean_latency_ms"] < 30 <= st["p95_latency_ms"]


def test_concurrent_gets_load_once() -> None:
    mm = ModelManager()
    loads = []
    gate = threading.Event()

    def slow() -> str:
        loads.append(1)
        gate.wait(1)
        return "M"

    threads = [threading.Thread(target=lambda: mm.get("k", slow, 1)) for _ in range(5)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(loads) == 1


class Device:
    """GPU memory as a device reports it: each load adds what the model takes there."""

    def __init__(self) -> None:
        self.used = {0: 300 * 2**20, 1: 0}

    def read(self, gpu: int) -> int | None:
        return self.used.get(gpu)

    def loader(self, gpu: int, mb: int, model: str) -> Callable[[], str]:
        def load() -> str:
            self.used[gpu] += mb * 2**20
            return model

        return load


def test_a_model_on_a_gpu_costs_what_the_device_measured_not_its_file() -> None:
    dev = Device()
    mm = ModelManager(memory_limit_bytes=10, gpu_limit_bytes=5000 * 2**20, device_used=dev.read)
    # a 1.5 GB int8 file that takes 3 GB as float16 on GPU 0
    mm.get("whisper", dev.loader(0, 3000, "W"), 1500 * 2**20, device="cuda:0")
    assert mm.gpu_used_bytes(0) == 3000 * 2**20
    assert mm.used_bytes == 0  # nothing in host memory: the 10-byte host budget evicts nothing
    snap = mm.snapshot()["whisper"]
    assert snap["memory_mb"] == 3000 and snap["gpu"] == 0


def test_each_gpu_has_its_own_budget_and_evicts_its_own_least_recently_used() -> None:
    dev = Device()
    closed: list[str] = []
    mm = ModelManager(memory_limit_bytes=10**12, gpu_limit_bytes=5000 * 2**20, device_used=dev.read)
    mm.get("cpu-model", lambda: "C", 100, closed.append)
    mm.get("a", dev.loader(0, 2000, "A"), 1, closed.append, device="cuda")  # "cuda" is GPU 0
    mm.get("b", dev.loader(0, 2000, "B"), 1, closed.append, device="cuda:0")
    mm.get("other", dev.loader(1, 4500, "O"), 1, closed.append, device="cuda:1")  # GPU 1: alone, fits
    mm.get("a", dev.loader(0, 2000, "A2"), 1, device="cuda:0")  # a hit: b is now the oldest on GPU 0
    mm.get("c", dev.loader(0, 2000, "C0"), 1, closed.append, device="cuda:0")  # 6000 > 5000 on GPU 0
    assert closed == ["B"]
    assert mm.loaded() == ["cpu-model", "other", "a", "c"]
    assert mm.gpu_used_bytes(0) == 4000 * 2**20 and mm.gpu_used_bytes(1) == 4500 * 2**20


def test_without_a_device_reading_the_file_size_stands_in() -> None:
    mm = ModelManager(gpu_limit_bytes=150, device_used=lambda gpu: None)
    mm.get("a", lambda: "A", 100, device="cuda:0")
    mm.get("b", lambda: "B", 100, device="cuda:0")  # 200 > 150: a goes
    assert mm.loaded() == ["b"] and mm.gpu_used_bytes(0) == 100
    assert mm.snapshot()["b"]["gpu"] == 0


def test_nvidia_smi_readings_parse() -> None:
    from linguamesh.engines.device_memory import parse_device, parse_mib

    assert parse_mib("1234\n") == 1234 * 2**20
    assert parse_mib("") is None and parse_mib("[N/A]") is None
    assert parse_device("cuda") == 0 and parse_device("cuda:3") == 3
    assert parse_device("cpu") is None and parse_device("auto") is None and parse_device("cuda:x") is None
