"""Prometheus metrics of a scoring process, in a registry of its own (one per worker)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
STEP_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


@dataclass
class ScoringMetrics:
    """Counters, gauges and histograms the worker and the HTTP enricher update."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
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
        self.batch_size = Histogram(
            "skewless_batch_size", "events per micro-batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000), registry=r,
        )  # fmt: skip
        self.end_to_end = Histogram(
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
        self.scores = Histogram(
            "skewless_score", "score distribution",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99), registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge("skewless_consumer_lag", "records behind the end", registry=r)
        self.model_version = Gauge(
            "skewless_model_version", "registered version in use", ["model"], registry=r
        )
        self.drift_psi = Gauge(
            "skewless_feature_psi", "rolling PSI against the training reference", ["feature"],
            registry=r,
        )  # fmt: skip

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on host:port (0: do nothing)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
