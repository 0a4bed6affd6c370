from __future__ import annotations

import threading
import time

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
