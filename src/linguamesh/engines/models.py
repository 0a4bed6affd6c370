"""The model manager: one cache of loaded models for all engines of a node.

* LRU: a model not used for the longest time is unloaded first when the
  estimated memory of loaded models exceeds ``memory_limit_bytes`` (the model
  being loaded or used right now is never the victim).
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


def path_size(path: str | Path) -> int:
    """Bytes on disk of a model file or directory: the estimate of its memory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


class ModelManager:
    def __init__(self, memory_limit_bytes: int = 8 * 1024**3) -> None:
        self.memory_limit_bytes = memory_limit_bytes
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
    ) -> Any:
        """The loaded model for ``key``, loading it (and evicting others) if needed."""
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
            t = time.perf_counter()
            try:
                model = loader()
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
                self._loaded[key] = _Entry(model, size, close)
                self._evict(keep=key)
            log.info("model.loaded", model=key, seconds=round(dt, 3), size_mb=round(size / 2**20, 1))
            return model

    def _evict(self, keep: str) -> None:
        while self.used_bytes > self.memory_limit_bytes and len(self._loaded) > 1:
            victim = next(k for k in self._loaded if k != keep)
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
        return sum(e.size for e in self._loaded.values())

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        with self._lock:
            return {k: {**v.as_dict(), "loaded": int(k in self._loaded)} for k, v in self._stats.items()}

    def close(self) -> None:
        with self._lock:
            for key, entry in list(self._loaded.items()):
                if entry.close is not None:
                    entry.close(entry.model)
                del self._loaded[key]
