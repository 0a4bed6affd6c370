"""Prometheus metrics for the scheduler and the node.

Counters live in a plain dict keyed by (name, labels) — one dict increment on
the hot path — and are exported by a collector at scrape time as
``linguamesh_<name>_total``; gauges are computed at scrape time from the live
state; latencies are real prometheus-client histograms, in seconds, so they
aggregate across processes. Each scheduler or node has its own registry, so
several can run in one process (tests, ``up``); each also publishes the
standard ``process_*`` and ``python_info`` series and ``linguamesh_build_info``.
"""

from __future__ import annotations

import platform
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5)

#: Documentation and label names of every counter.
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    # scheduler
    "sessions_created": ("Sessions opened", ()),
    "quota_refused": ("Sessions and utterances an API key's quota refused", ("key",)),
    "overload_periods": ("Times the event loop fell behind and new work was refused (overloaded)", ()),
    "key_usage": (
        "Use of each API key (--api-keys) on this instance, by kind: sessions, utterances, jobs, audio_seconds",
        ("key", "kind"),
    ),
    "webhooks": (
        "Webhooks (--webhook-url) by event and outcome: delivered, retried, failed, dropped",
        ("event", "outcome"),
    ),
    "sessions_resumed": ("Sessions resumed after a reconnect", ()),
    "events_replayed": ("Session events replayed on resume", ()),
    "utterances_received": ("Utterances accepted", ()),
    "utterances_duplicate": ("Repeated utterances dropped (same index or request_id)", ()),
    "jobs_created": ("Jobs created", ()),
    "jobs_dispatched": ("job_assign messages written to a node", ()),
    "jobs_finished": ("Jobs ended, by final state and error code", ("state", "code")),
    "reservations_attempted": ("Slot reservations attempted", ()),
    "reservations_succeeded": ("Slot reservations that took a slot", ()),
    "selections": (
        "Selections of a node for an attempt, by outcome (ok, queued, failed) and selector; "
        "a job retried while it waits counts once",
        ("outcome", "selector"),
    ),
    "selection_failures": (
        "Attempts that found no node at once, by reason (no_available_pool, no_capacity, "
        "fair_share, dependency_down); counted once per attempt",
        ("reason",),
    ),
    "selection_fallbacks": ("Preferred node not used, by reason", ("reason",)),
    "failovers": ("Attempts abandoned and retried on another node, by reason", ("reason",)),
    "timeouts": ("Timeouts that fired, by kind", ("kind",)),
    "results_emitted": ("translation_result events created for clients", ()),
    "results_delivered": ("translation_result events whose socket write completed", ()),
    "results_duplicate": ("Duplicate or late job_result messages acked and dropped", ()),
    "protocol_errors": ("Bad input answered with an error, by code", ("code",)),
    "nodes_registered": ("Node registrations", ()),
    "nodes_sat_out": ("Nodes that sat out after ack timeouts in a row (outliers)", ()),
    "node_messages_refused": ("Job messages from a node the attempt was not assigned to, by kind", ("kind",)),
    "rate_limited": ("Utterances refused with rate_limited, by scope and kind", ("scope", "kind")),
    "connections_refused": ("Sockets refused, by reason (origin, limit, handshake_timeout)", ("reason",)),
    # node
    "node_jobs_received": ("Jobs received by this node", ()),
    "node_jobs_finished": ("Jobs finished by this node, by outcome", ("outcome",)),
    "node_jobs_cancelled": ("Jobs cancelled on this node", ()),
    "node_connects": ("Connections to a scheduler", ()),
    "node_connect_failures": ("Attempts to connect to a scheduler that failed (retried with backoff)", ()),
}


#: Counters a node counts; every other one is the scheduler's.
NODE_COUNTERS = frozenset(
    {
        "node_jobs_received",
        "node_jobs_finished",
        "node_jobs_cancelled",
        "node_connects",
        "node_connect_failures",
    }
)

#: Label values known in advance: these series are published at 0 from the start, so a
#: rate or an alert over them has data before the first event.
KNOWN_LABELS: dict[str, list[tuple[str, ...]]] = {
    "timeouts": [("ack",), ("result",), ("pending",)],
    "failovers": [
        ("ack_timeout",),
        ("result_timeout",),
        ("node_lost",),
        ("rejected",),
        ("dispatch_failed",),
        ("node error",),
    ],
    "connections_refused": [("origin",), ("limit",), ("handshake_timeout",), ("draining",)],
    "node_jobs_finished": [("ok",), ("failed",)],
    "selections": [(o, s) for o in ("ok", "queued", "failed") for s in ("pooled", "flat")],
    "jobs_finished": [("completed", "none"), ("failed", "no_available_node"), ("failed", "timeout")],
}


def _known_at_start() -> dict[str, list[tuple[str, ...]]]:
    """Label values that exist before any event: every error code, selection failure reason
    and preferred-node fallback reason."""
    from ..core.selection import Fallback, Reason
    from ..protocol.errors import ErrorCode

    reasons: list[tuple[str, ...]] = [(r.value,) for r in Reason]
    return {
        **KNOWN_LABELS,
        "protocol_errors": [(c.value,) for c in ErrorCode],
        "selection_failures": [*reasons, ("fair_share",), ("dependency_down",)],
        "selection_fallbacks": [(f.value,) for f in Fallback],
    }


class Counters:
    def __init__(self, role: str = "scheduler") -> None:
        self.values: dict[tuple[str, tuple[str, ...]], float] = {}
        mine = [n for n in COUNTERS if (n in NODE_COUNTERS) == (role == "node")]
        known = _known_at_start()
        for name in mine:  # every counter of this role exists from the start, at 0
            for labels in known.get(name, [()] if not COUNTERS[name][1] else []):
                self.values[(name, labels)] = 0.0

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        key = (name, tuple(str(labels[k]) for k in COUNTERS[name][1]))
        self.values[key] = self.values.get(key, 0) + n

    def value(self, name: str, **labels: str) -> float:
        """Sum over every label set matching ``labels``."""
        names = COUNTERS[name][1]
        want = {names.index(k): str(v) for k, v in labels.items()}
        return sum(
            v for (n, lv), v in self.values.items() if n == name and all(lv[i] == x for i, x in want.items())
        )

    def families(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        for (name, labels), v in self.values.items():
            by_name.setdefault(name, []).append((labels, v))
        for name, rows in by_name.items():
            doc, label_names = COUNTERS[name]
            fam = CounterMetricFamily(f"linguamesh_{name}", doc, labels=list(label_names))
            for labels, v in rows:
                fam.add_metric(list(labels), v)
            yield fam


GaugeFn = Callable[[], Iterable[tuple[dict[str, str], float]]]


class _Collector(Collector):
    def __init__(
        self,
        counters: Counters,
        gauges: dict[str, tuple[str, GaugeFn]],
        totals: dict[str, tuple[str, GaugeFn]],
    ) -> None:
        self.counters = counters
        self.gauges = gauges
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        yield from self.counters.families()
        for kind, table in ((GaugeMetricFamily, self.gauges), (CounterMetricFamily, self.totals)):
            for name, (doc, fn) in table.items():
                rows = list(fn())
                label_names = sorted(rows[0][0]) if rows else []
                fam = kind(f"linguamesh_{name}", doc, labels=label_names)
                for labels, v in rows:
                    fam.add_metric([labels[k] for k in label_names], v)
                yield fam


class Metrics:
    """One process part's metrics: counters, histograms, scrape-time gauges."""

    def __init__(self, role: str = "scheduler") -> None:
        """``role``: "scheduler" or "node": each publishes its own counters and histograms only."""
        from .. import __version__

        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        self.counters = Counters(role)
        self.gauges: dict[str, tuple[str, GaugeFn]] = {}
        self.totals: dict[str, tuple[str, GaugeFn]] = {}
        self.registry.register(_Collector(self.counters, self.gauges, self.totals))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, resident memory, fds
        PlatformCollector(registry=self.registry)  # python_info
        self.gauge(
            "build_info",
            "Always 1: the version and role of this process",
            lambda: [({"version": __version__, "role": role, "python": platform.python_version()}, 1.0)],
        )
        sched = self.registry if role == "scheduler" else None  # a node does not publish these
        node = self.registry if role == "node" else None
        self.dispatch_latency = Histogram(
            "linguamesh_dispatch_latency_seconds",
            "Job created -> job_assign written to the node (waits and failovers included)",
            buckets=LATENCY_BUCKETS,
            registry=sched,
        )
        self.queue_wait = Histogram(
            "linguamesh_queue_wait_seconds",
            "An attempt's wait for a node: from the job (or its failover) needing one to the slot reserved",
            ["pair"],
            buckets=LATENCY_BUCKETS,
            registry=sched,
        )
        self.ack_latency = Histogram(
            "linguamesh_ack_latency_seconds",
            "job_assign written -> job_ack from the node",
            buckets=LATENCY_BUCKETS,
            registry=sched,
        )
        self.delivery_latency = Histogram(
            "linguamesh_delivery_latency_seconds",
            "translation_result created -> written to the client socket",
            buckets=LATENCY_BUCKETS,
            registry=sched,
        )
        self.first_partial = Histogram(
            "linguamesh_first_partial_seconds",
            "Job created -> its first partial transcript sent to the client",
            buckets=STAGE_BUCKETS,
            registry=sched,
        )
        self.end_to_end = Histogram(
            "linguamesh_end_to_end_latency_seconds",
            "Job created -> translation_result created, by status and language pair",
            ["status", "pair"],
            buckets=STAGE_BUCKETS,
            registry=sched,
        )
        self.stage_latency = Histogram(
            "linguamesh_stage_latency_seconds",
            "Per-stage time of finished jobs, as nodes report it (asr, repair, nmt, tts)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=sched,
        )
        self.node_stage = Histogram(
            "linguamesh_node_stage_seconds",
            "Per-stage time of the jobs this node ran (asr, repair, nmt, tts)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=node,
        )
        self.real_time_factor = Histogram(
            "linguamesh_node_real_time_factor",
            "Processing time / audio length of the jobs this node ran (below 1: faster than spoken)",
            buckets=RTF_BUCKETS,
            registry=node,
        )
        self.model_inference = Histogram(
            "linguamesh_model_inference_seconds",
            "Time of one inference, by model",
            ["model"],
            buckets=STAGE_BUCKETS,
            registry=node,
        )
        #: results created here and not yet written to their client (delivery latency)
        self._created: OrderedDict[str, float] = OrderedDict()

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        self.counters.inc(name, n, **labels)

    def value(self, name: str, **labels: str) -> float:
        return self.counters.value(name, **labels)

    def gauge(self, name: str, doc: str, fn: GaugeFn) -> None:
        self.gauges[name] = (doc, fn)

    def counter(self, name: str, doc: str, fn: GaugeFn) -> None:
        """A running total kept elsewhere, read at scrape time (published as ``<name>_total``)."""
        self.totals[name] = (doc, fn)

    def result_created(self, job_id: str, at: float) -> None:
        self._created[job_id] = at
        while len(self._created) > 10_000:  # results whose session went away are never written
            self._created.popitem(last=False)

    def result_written(self, job_id: str, at: float) -> None:
        created = self._created.pop(job_id, None)
        if created is not None:
            self.delivery_latency.observe(max(0.0, at - created))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


def model_stat_rows(
    stats: dict[str, dict[str, Any]], extra: dict[str, str]
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Per-model stats (from a ModelManager snapshot) as metric rows, one list per stat."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for model, st in stats.items():
        for stat, value in st.items():
            out.setdefault(stat, []).append(({**extra, "model": model}, float(value)))
    return out


#: Per-model running totals (published as ``<prefix>model_<stat>_total``); latency is the
#: ``model_inference_seconds`` histogram, and ``loaded`` a gauge.
MODEL_TOTALS = ("loads", "load_seconds", "unloads", "inferences", "errors", "cache_hits", "cache_misses")


def register_model_metrics(metrics: Metrics, prefix: str, rows: Callable[[], dict[str, list[Any]]]) -> None:
    """The per-model series: counters for the running totals, a gauge for ``loaded``."""
    for stat in MODEL_TOTALS:
        metrics.counter(
            f"{prefix}model_{stat}",
            f"Per-model {stat.replace('_', ' ')}",
            lambda stat=stat: rows().get(stat, []),  # type: ignore[misc]
        )
    metrics.gauge(f"{prefix}model_loaded", "1 while the model is loaded", lambda: rows().get("loaded", []))
    metrics.gauge(
        f"{prefix}model_memory_bytes",
        "Memory a loaded model takes: measured on the device on a GPU, its files' size in host memory",
        lambda: [(labels, mb * 2**20) for labels, mb in rows().get("memory_mb", [])],
    )
