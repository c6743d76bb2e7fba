"""Prometheus metrics of a scoring process, in a registry of its own (one per worker), and
its health.

`serve` exposes them over HTTP (`serving.web`): `GET /metrics` in Prometheus's text format,
`GET /health` as JSON: `{"status": "ok"}`, or `{"status": "degraded", "faults": {dependency:
last error}}` while the process waits out a fault of Redis, Kafka or the registry (the same
faults are the gauge `skewless_degraded{dependency}`). A degraded process is alive and keeps
its place: it answers 200 either way.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.web import AppServer

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
STEP_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class BatchHistogram(Collector):
    """A histogram fed a whole array at a time (one numpy pass instead of a call per value).

    Exposed exactly like a `prometheus_client.Histogram` of the same name and buckets
    (`_bucket{le=...}` cumulative counts with `+Inf`, `_count`, `_sum`).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Count every value into its bucket (`value <= le`)."""
        values = np.asarray(values, dtype=np.float64)
        slots = np.searchsorted(self.bounds, values, side="left")
        counts = np.bincount(slots, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        labels = [_bound_label(bound) for bound in self.bounds.tolist()] + ["+Inf"]
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=list(zip(labels, cumulative, strict=True)),
            sum_value=total,
        )


def _bound_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@dataclass
class ScoringMetrics:
    """Counters, gauges and histograms the worker and the HTTP enricher update."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        if values.ValueClass is not values.MutexValue:
            raise RuntimeError(
                "prometheus_client keeps values in shared files (PROMETHEUS_MULTIPROC_DIR is "
                f"{os.environ.get('PROMETHEUS_MULTIPROC_DIR')!r}): every registry of this "
                "process would share its counters; unset PROMETHEUS_MULTIPROC_DIR"
            )
        r = self.registry
        self.events_in = Counter("skewless_events_in", "transactions consumed", registry=r)
        self.events_scored = Counter("skewless_events_scored", "scores produced", registry=r)
        self.events_degraded = Counter(
            "skewless_events_degraded", "scored by the lag fallback", registry=r
        )
        self.dead_letters = Counter(
            "skewless_dead_letters", "malformed events sent to the DLQ", ["reason"], registry=r
        )
        self.labels_in = Counter("skewless_labels_in", "label events stored", registry=r)
        self.batches_rewound = Counter(
            "skewless_batches_rewound",
            "micro-batches not committed (delivery or commit failed) and read again",
            registry=r,
        )
        self.batch_size = Histogram(
            "skewless_batch_size", "events per micro-batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000), registry=r,
        )  # fmt: skip
        self.end_to_end = BatchHistogram(
            "skewless_end_to_end_seconds",
            "Kafka record timestamp to score acknowledged",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.feature_seconds = Histogram(
            "skewless_feature_seconds", "feature read per batch", buckets=STEP_BUCKETS, registry=r
        )
        self.model_seconds = Histogram(
            "skewless_model_seconds", "model call per batch", buckets=STEP_BUCKETS, registry=r
        )
        self.scores = BatchHistogram(
            "skewless_score", "score distribution",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99), registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge("skewless_consumer_lag", "records behind the end", registry=r)
        self.queue_depth = Gauge(
            "skewless_queue_depth",
            "batches in a stage's queue: compute = read, its state and scores being computed; "
            "delivery = handed to the delivery stage, not committed",
            ["stage"], registry=r,
        )  # fmt: skip
        for stage in ("compute", "delivery"):
            self.queue_depth.labels(stage=stage).set(0)
        self.delivery_wait = Histogram(
            "skewless_delivery_wait_seconds",
            "time a computed batch waited for the batch before it to be committed",
            buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_version = Gauge(
            "skewless_model_version", "registered version in use", ["model"], registry=r
        )
        self.degraded = Gauge(
            "skewless_degraded", "1 while a fault of this dependency is waited out",
            ["dependency"], registry=r,
        )  # fmt: skip
        self.faults: dict[str, str] = {}
        self._health_lock = threading.Lock()
        self.drift_psi = Gauge(
            "skewless_feature_psi", "rolling PSI against the training reference", ["feature"],
            registry=r,
        )  # fmt: skip

    def fault(self, dependency: str, error: BaseException) -> None:
        """`dependency` (redis, kafka, registry) failed; the process is degraded until
        `recovered`."""
        with self._health_lock:
            self.faults[dependency] = f"{type(error).__name__}: {error}"[:500]
        self.degraded.labels(dependency=dependency).set(1)

    def recovered(self, dependency: str) -> None:
        with self._health_lock:
            if self.faults.pop(dependency, None) is None:
                return
        self.degraded.labels(dependency=dependency).set(0)

    def health(self) -> dict[str, object]:
        with self._health_lock:
            faults = dict(self.faults)
        return {"status": "degraded", "faults": faults} if faults else {"status": "ok"}

    def app(self) -> Starlette:
        """`/metrics` and `/health` of this registry."""

        async def metrics(request: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        async def health(request: Request) -> Response:
            return JSONResponse(self.health())

        return Starlette(
            routes=[
                Route("/metrics", metrics, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
            ]
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> AppServer | None:
        """Expose /metrics and /health on host:port from a thread (0: do nothing); the
        server, to stop."""
        if not port:
            return None
        return AppServer(self.app(), host, port).start()
