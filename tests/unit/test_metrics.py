"""The batch histogram is exposed exactly like prometheus_client's own histogram."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from serving.metrics import BatchHistogram, ScoringMetrics
from serving.web import AppServer

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _samples(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_batch_histogram_matches_the_per_value_histogram() -> None:
    values = np.array([0.0, 0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 1.5, 30.0])
    expected_registry, batch_registry = CollectorRegistry(), CollectorRegistry()
    expected = Histogram("latency", "doc", buckets=BUCKETS, registry=expected_registry)
    batch = BatchHistogram("latency", "doc", buckets=BUCKETS, registry=batch_registry)
    for value in values:
        expected.observe(float(value))
    batch.observe_many(values[:4])
    batch.observe_many(values[4:])
    batch.observe_many(np.array([]))
    assert _samples(batch_registry) == _samples(expected_registry)
    assert 'latency_bucket{le="0.001"} 3.0' in _samples(batch_registry)


def test_a_feast_import_does_not_make_registries_share_their_counters(tmp_path: Path) -> None:
    # feast.metrics switches prometheus_client to shared-file values unless it chose first,
    # and leaves the variable that does it to every child process.
    script = (
        "import os, skewless, feast.metrics\n"
        "from serving.metrics import ScoringMetrics\n"
        "first, second = ScoringMetrics(), ScoringMetrics()\n"
        "first.events_scored.inc(5)\n"
        "print(second.events_scored._value.get(), os.environ['PROMETHEUS_MULTIPROC_DIR'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    value, feast_folder = done.stdout.split()
    assert value == "0.0"
    child = subprocess.run(  # a child of a process that imported Feast's metrics
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": feast_folder},
    )
    assert child.stdout.split()[0] == "0.0"
    chosen = tmp_path / "metrics"  # set on purpose: refused, naming the variable
    chosen.mkdir()
    refused = subprocess.run(
        [sys.executable, "-c", "import skewless\nfrom serving.metrics import ScoringMetrics\n"
         "ScoringMetrics()"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(chosen)},
    )  # fmt: skip
    assert refused.returncode != 0 and "PROMETHEUS_MULTIPROC_DIR" in refused.stderr


def test_health_reports_the_faults_being_waited_out() -> None:
    metrics = ScoringMetrics()
    server = metrics.serve(port=0)
    assert server is None  # port 0: no server
    server = AppServer(metrics.app(), "127.0.0.1", 0).start()

    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as r:
            return bytes(r.read())

    try:
        assert json.loads(get("/health")) == {"status": "ok"}
        metrics.fault("redis", ConnectionError("Connection refused"))
        assert json.loads(get("/health")) == {
            "status": "degraded",
            "faults": {"redis": "ConnectionError: Connection refused"},
        }
        assert b'skewless_degraded{dependency="redis"} 1.0' in get("/metrics")
        metrics.recovered("redis")
        assert json.loads(get("/health")) == {"status": "ok"}
        assert b'skewless_degraded{dependency="redis"} 0.0' in get("/metrics")
    finally:
        server.stop()
