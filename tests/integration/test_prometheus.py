"""The real Prometheus of `skewless services up` scraping a real worker and HTTP enricher."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from serving.metrics import ScoringMetrics
from serving.worker import build_worker
from skewless import services
from skewless.services import prometheus_server
from skewless.services.process import wait_for
from skewless.settings import Settings
from tests.conftest import (
    TrainedPlatform,
    event_body,
    free_port,
    private_settings,
    start_enricher,
    stop_enricher,
)

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "monitoring" / "grafana" / "skewless.json"
SCRAPED_WITHIN_S = 60.0


def _value(settings: Settings, promql: str) -> float | None:
    """The single value of an instant query, None while it has no result."""
    result = prometheus_server.query(settings, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def _events(platform: TrainedPlatform, count: int) -> list[dict[str, Any]]:
    start = datetime(2026, 5, 25, tzinfo=UTC)
    tx = platform.transactions
    window = tx[(tx["tx_datetime"] >= start) & (tx["tx_datetime"] < start + timedelta(days=1))]
    return [event_body(row) for _, row in window.head(count).iterrows()]


def test_prometheus_scrapes_the_worker_and_the_enricher(trained_platform: TrainedPlatform) -> None:
    settings = private_settings(
        trained_platform,
        metrics_port=free_port(),
        http_port=free_port(),
        prometheus_port=free_port(),
        prometheus_scrape_interval_s=1,
    )
    events = _events(trained_platform, 120)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for event in events:
        producer.send(settings.topic_transactions, json.dumps(event).encode())
    producer.flush()
    producer.close()

    metrics = ScoringMetrics()
    worker = build_worker(settings, metrics)
    metrics_server = metrics.serve(settings.metrics_port)
    assert metrics_server is not None
    enricher = start_enricher(settings, port=settings.http_port, threshold=0.5)
    try:
        prometheus_server.start(settings)
        status = {row.name: row for row in services.status(settings)}
        assert status["prometheus"].healthy
        assert status["prometheus"].pid is not None

        stats = worker.run(max_events=len(events), idle_exit_s=20)
        assert stats.scored == len(events)

        scored = 'skewless_events_scored_total{job="skewless-worker"}'
        assert wait_for(lambda: _value(settings, scored) == len(events), SCRAPED_WITHIN_S), (
            f"{scored} = {prometheus_server.query(settings, scored)}, want {len(events)}"
        )
        champion = worker.core.model.version
        version = f'skewless_model_version{{job="skewless-worker", model="{settings.model_name}"}}'
        assert _value(settings, version) == float(champion)
        for job in ("skewless-worker", "skewless-http"):  # each target has its own first scrape
            up = f'up{{job="{job}"}}'
            assert wait_for(lambda: _value(settings, up) == 1.0, SCRAPED_WITHIN_S), (  # noqa: B023
                prometheus_server.query(settings, "up")
            )
        # The repository's recording rules run on the scraped series.
        recorded = 'job:skewless_events_scored:rate1m{job="skewless-worker"}'
        assert wait_for(lambda: _value(settings, recorded) is not None, SCRAPED_WITHIN_S)

        # Every query of the Grafana dashboard is valid PromQL for this Prometheus.
        panels = json.loads(DASHBOARD.read_text())["panels"]
        for query in [target["expr"] for panel in panels for target in panel["targets"]]:
            prometheus_server.query(settings, query)

        # The alerts page of Debian's build of the UI lists the repository's alerts.
        alerts_page = f"{prometheus_server.url(settings)}/classic/alerts"
        with urllib.request.urlopen(alerts_page, timeout=10) as response:
            page = response.read().decode()
        assert "SkewlessWorkerDown" in page
        assert "SkewlessFeatureDriftPSI" in page
    finally:
        prometheus_server.stop(settings)
        stop_enricher(enricher)
        metrics_server.stop()
    assert not prometheus_server.is_ready(settings)
