"""The model manager: one cache of loaded models for all engines of a node.

* LRU: a model not used for the longest time is unloaded first when the
  memory of loaded models exceeds the budget of where they live (the model
  being loaded or used right now is never the victim): ``memory_limit_bytes``
  for models in host memory (estimated by their files' size), and
  ``gpu_limit_bytes`` for each GPU, where a model's cost is measured on the device
  when it loads (``device_memory.py``).
* Per-model metrics: loads and load seconds, inferences, mean and p95
  latency, cache hits and misses — shown by ``linguamesh models``, sent to the
  scheduler in heartbeats and exported as Prometheus metrics.
* A model that fails to load raises :class:`ModelLoadError` with what is
  wrong (missing file, bad format); the node then registers without the
  capabilities that needed it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..observability.logging import get_logger
from . import device_memory

log = get_logger("linguamesh.node.models")


class ModelLoadError(Exception):
    """A model could not be loaded; the message says why and where."""


def device_options(cfg: dict[str, Any], engine: str, beam_size: int) -> tuple[str, str, int, int, int]:
    """The options of a CTranslate2-backed engine (faster-whisper, ctranslate2): ``device``,
    ``compute_type``, ``device_index`` (which GPU), ``num_workers`` (decodes of one model at
    once) and ``beam_size`` (``beam_size``: its default), checked."""
    device = str(cfg.get("device", "cpu"))
    compute_type = str(cfg.get("compute_type", "int8"))
    device_index = int(cfg.get("device_index", 0))
    num_workers = int(cfg.get("num_workers", 1))
    beams = int(cfg.get("beam_size", beam_size))
    if num_workers < 1 or beams < 1 or device_index < 0:
        raise ModelLoadError(f"{engine}: num_workers and beam_size must be at least 1, device_index >= 0")
    return device, compute_type, device_index, num_workers, beams


def placement(device: str, device_index: int) -> str:
    """Where a CTranslate2-backed model lives, for the manager's budgets: ``cuda:N`` or ``cpu``."""
    return f"cuda:{device_index}" if device == "cuda" else device


@dataclass
class ModelStats:
    loads: int = 0
    load_seconds: float = 0.0
    unloads: int = 0
    inferences: int = 0
    errors: int = 0
    hits: int = 0
    misses: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=500))

    def as_dict(self) -> dict[str, float | int]:
        lat = sorted(self.latencies)
        mean = sum(lat) / len(lat) if lat else 0.0
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
        return {
            "loads": self.loads,
            "load_seconds": round(self.load_seconds, 4),
            "unloads": self.unloads,
            "inferences": self.inferences,
            "errors": self.errors,
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "mean_latency_ms": round(mean * 1000, 3),
            "p95_latency_ms": round(p95 * 1000, 3),
        }


@dataclass
class _Entry:
    model: Any
    size: int
    close: Callable[[Any], None] | None
    #: None: host memory; N: GPU N (then ``size`` was measured on the device if it could be)
    gpu: int | None = None


def path_size(path: str | Path) -> int:
    """Bytes on disk of a model file or directory: the estimate of its memory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


class ModelManager:
    def __init__(
        self,
        memory_limit_bytes: int = 8 * 1024**3,
        gpu_limit_bytes: int | None = None,
        device_used: Callable[[int], int | None] = device_memory.used_bytes,
    ) -> None:
        self.memory_limit_bytes = memory_limit_bytes
        #: per GPU; None: no limit on GPUs (each model's measured size is still shown)
        self.gpu_limit_bytes = gpu_limit_bytes
        #: the used memory of GPU N as the device reports it (None: no reading)
        self.device_used = device_used
        self._device_locks: dict[int, threading.Lock] = {}
        self._loaded: OrderedDict[str, _Entry] = OrderedDict()
        self._stats: dict[str, ModelStats] = {}
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}
        #: called with (model, seconds) after each inference (the node's latency histogram)
        self.on_inference: Callable[[str, float], None] | None = None

    def stats(self, key: str) -> ModelStats:
        with self._lock:
            st = self._stats.get(key)
            if st is None:
                st = self._stats[key] = ModelStats()
            return st

    def get(
        self,
        key: str,
        loader: Callable[[], Any],
        size: int,
        close: Callable[[Any], None] | None = None,
        device: str = "cpu",
    ) -> Any:
        """The loaded model for ``key``, loading it (and evicting others) if needed.

        ``size``: its file size, the estimate for host memory; on a GPU (``device``
        ``cuda`` or ``cuda:N``) the device's own reading replaces it when there is one."""
        st = self.stats(key)
        with self._lock:
            entry = self._loaded.get(key)
            if entry is not None:
                self._loaded.move_to_end(key)
                st.hits += 1
                return entry.model
            st.misses += 1
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one load per key at a time; others wait for it
            with self._lock:
                entry = self._loaded.get(key)
                if entry is not None:
                    self._loaded.move_to_end(key)
                    return entry.model
            gpu = device_memory.parse_device(device)
            t = time.perf_counter()
            try:
                model, size, measured = self._load(key, loader, size, gpu)
            except ModelLoadError:
                st.errors += 1
                raise
            except Exception as exc:
                st.errors += 1
                raise ModelLoadError(f"{key}: {type(exc).__name__}: {exc}") from exc
            dt = time.perf_counter() - t
            with self._lock:
                st.loads += 1
                st.load_seconds += dt
                self._loaded[key] = _Entry(model, size, close, gpu)
                self._evict(keep=key, gpu=gpu)
            log.info(
                "model.loaded", model=key, seconds=round(dt, 3), size_mb=round(size / 2**20, 1), device=device,
                measured_on_device=measured,
            )  # fmt: skip
            return model

    def _load(self, key: str, loader: Callable[[], Any], size: int, gpu: int | None) -> tuple[Any, int, bool]:
        """(model, its size, whether the device measured it)."""
        if gpu is None:
            return loader(), size, False
        with self._lock:
            device_lock = self._device_locks.setdefault(gpu, threading.Lock())
        with device_lock:  # one load per GPU at a time: the difference is this model's
            before = self.device_used(gpu)
            model = loader()
            after = self.device_used(gpu) if before is not None else None
        if before is None or after is None:
            log.warning("model.gpu_memory_unmeasured", model=key, gpu=gpu, using="file size")
            return model, size, False
        return model, max(0, after - before), True

    def _evict(self, keep: str, gpu: int | None = None) -> None:
        """Unload least recently used models where ``keep`` was loaded until that place
        is within its budget."""
        limit = self.memory_limit_bytes if gpu is None else self.gpu_limit_bytes
        if limit is None:
            return
        while True:
            here = [k for k, e in self._loaded.items() if e.gpu == gpu]
            if sum(self._loaded[k].size for k in here) <= limit or len(here) <= 1:
                return
            victim = next(k for k in here if k != keep)
            entry = self._loaded.pop(victim)
            self._stats[victim].unloads += 1
            if entry.close is not None:
                try:
                    entry.close(entry.model)
                except Exception as exc:  # noqa: BLE001 - unloading must not break the job that loads
                    log.warning("model.unload_failed", model=victim, error=repr(exc))
            log.info("model.evicted", model=victim, size_mb=round(entry.size / 2**20, 1))

    @contextmanager
    def inference(self, key: str) -> Iterator[None]:
        """Time one inference of ``key`` for the metrics."""
        st = self.stats(key)
        t = time.perf_counter()
        try:
            yield
        except Exception:
            st.errors += 1
            raise
        finally:
            st.inferences += 1
            took = time.perf_counter() - t
            st.latencies.append(took)
            if self.on_inference is not None:
                self.on_inference(key, took)

    @property
    def used_bytes(self) -> int:
        """Host memory of the loaded models (by their files' size)."""
        return sum(e.size for e in self._loaded.values() if e.gpu is None)

    def gpu_used_bytes(self, gpu: int) -> int:
        """GPU ``gpu``'s memory taken by the loaded models (as measured when they loaded)."""
        return sum(e.size for e in self._loaded.values() if e.gpu == gpu)

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        """Per model: its counters, whether it is loaded, its memory in MB and where (``gpu``:
        the GPU's index, -1 for host memory) while loaded."""
        with self._lock:
            out: dict[str, dict[str, float | int]] = {}
            for k, v in self._stats.items():
                out[k] = {**v.as_dict(), "loaded": int(k in self._loaded)}
                entry = self._loaded.get(k)
                if entry is not None:
                    out[k]["memory_mb"] = round(entry.size / 2**20, 1)
                    out[k]["gpu"] = -1 if entry.gpu is None else entry.gpu
            return out

    def close(self) -> None:
        with self._lock:
            for key, entry in list(self._loaded.items()):
                if entry.close is not None:
                    entry.close(entry.model)
                del self._loaded[key]
