"""Shared fixtures: private Kafka, Redis and MLflow servers on free loopback ports.

The servers are started by the same code as `skewless services up`, in a temporary runtime
folder, once per test process, and stopped (whole process groups) at the end. `make test` runs
two processes (pytest-xdist), so each has servers, a trained platform and a registry of its
own; tests of one process share them, so a test that changes them works on its own model
name, topics, consumer group or state prefix.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pytest

from serving.http import Enricher, EnricherServer, HttpLimits
from serving.metrics import ScoringMetrics
from serving.scoring import build_core
from serving.validation import EventLimits
from skewless.data import write_transactions
from skewless.feature_store import export_environment
from skewless.services import kafka, mlflow_server, redis_cluster, redis_server
from skewless.settings import Settings, load_settings
from skewless.simulator import SimulationParams, simulate
from training.model import TrainingParams
from training.pipeline import TrainOptions, TrainSummary, run_training


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_servers() -> dict[str, Any]:
    """Settings of servers of the caller's own: free loopback ports, a small Kafka."""
    return {
        "kafka_port": free_port(),
        "kafka_controller_port": free_port(),
        "redis_port": free_port(),
        "mlflow_port": free_port(),
        "kafka_partitions": 2,
        "kafka_heap_mb": 384,
    }


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a private runtime folder and free ports.

    They are also exported as SKEWLESS_* variables for the session, so that commands run as
    subprocesses and the feature repository's modules see the same servers and folders.
    """
    runtime = tmp_path_factory.mktemp("runtime")
    settings = load_settings(runtime_dir=runtime, data_dir=runtime / "data", **private_servers())
    saved = dict(os.environ)
    export_environment(settings)
    yield settings
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def redis_service(service_settings: Settings) -> Iterator[Settings]:
    """A private Redis server for the session."""
    redis_server.start(service_settings)
    yield service_settings
    redis_server.stop(service_settings)


def start_redis_cluster(base: Settings, runtime_dir: Path | None = None) -> PrivateCluster:
    """A three-node Redis Cluster on free loopback ports, started like `services up` starts
    one; its settings (`redis_cluster=True`, `redis_port` its first node) are `base`'s."""
    ports: set[int] = set()
    while len(ports) < 2 * redis_cluster.NODES:
        ports.add(free_port())
    client_ports, bus_ports = sorted(ports)[:3], sorted(ports)[3:]
    values = base.model_dump()
    values.update(redis_port=client_ports[0], redis_cluster=True)
    if runtime_dir is not None:
        values.update(runtime_dir=runtime_dir)
    cluster = PrivateCluster(load_settings(**values), client_ports, bus_ports)
    cluster.start()
    return cluster


@dataclass(frozen=True)
class PrivateCluster:
    settings: Settings
    ports: list[int]
    bus_ports: list[int]

    def start(self) -> None:
        """Start the nodes that are not running; wait until the cluster is ok."""
        redis_cluster.start(self.settings, self.ports, self.bus_ports)


@pytest.fixture(scope="session")
def redis_cluster_service(service_settings: Settings) -> Iterator[Settings]:
    """A private three-node Redis Cluster for the session (`redis_cluster=True` settings whose
    `redis_port` is its first node)."""
    cluster = start_redis_cluster(service_settings)
    yield cluster.settings
    redis_cluster.stop(cluster.settings)


@pytest.fixture
def restored_environment() -> Iterator[None]:
    """The process environment back as it was after the test: materializing or opening the
    Feast store exports the test's settings (a cluster's among them) to the process."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(params=["redis", "redis-cluster"])
def state_redis(request: pytest.FixtureRequest) -> Settings:
    """The session's single Redis, then its Redis Cluster: tests of the state run on both."""
    name = "redis_service" if request.param == "redis" else "redis_cluster_service"
    return cast(Settings, request.getfixturevalue(name))


@pytest.fixture(scope="session")
def kafka_service(service_settings: Settings) -> Iterator[Settings]:
    """A private single-node KRaft Kafka with the platform's topics."""
    kafka.start(service_settings)
    yield service_settings
    kafka.stop(service_settings)


@pytest.fixture(scope="session")
def mlflow_service(service_settings: Settings) -> Iterator[Settings]:
    """A private MLflow tracking server on a SQLite store."""
    mlflow_server.start(service_settings)
    yield service_settings
    mlflow_server.stop(service_settings)


@pytest.fixture
def runtime_dir(service_settings: Settings) -> Path:
    return service_settings.runtime_dir


@dataclass(frozen=True)
class TrainedPlatform:
    """A small simulated data set, trained on: a champion in MLflow and state in Redis."""

    settings: Settings
    summary: TrainSummary
    data: Path
    transactions: pd.DataFrame


@pytest.fixture(scope="session")
def trained_platform(
    redis_service: Settings, kafka_service: Settings, tmp_path_factory: pytest.TempPathFactory
) -> TrainedPlatform:
    """`skewless train` once per session on 60 days of 400 card holders."""
    root = tmp_path_factory.mktemp("platform")
    settings = load_settings(
        data_dir=root / "data",
        runtime_dir=root / "runtime",
        redis_port=redis_service.redis_port,
        kafka_port=kafka_service.kafka_port,
        kafka_controller_port=kafka_service.kafka_controller_port,
        metrics_port=0,
        champion_poll_s=0.5,
    )
    params = SimulationParams(
        n_customers=400, n_terminals=800, n_days=60, start_date=date(2026, 4, 1)
    )
    transactions = simulate(params).transactions
    data = write_transactions(transactions, settings.data_dir / "sim" / "transactions.parquet")
    options = TrainOptions(data=data, params=replace(TrainingParams(), max_epochs=6))
    return TrainedPlatform(settings, run_training(settings, options), data, transactions)


def private_settings(platform: TrainedPlatform, **overrides: Any) -> Settings:
    """The platform's settings with topics and a consumer group of the caller alone."""
    run = uuid.uuid4().hex[:8]
    values = platform.settings.model_dump()
    values.update(
        topic_transactions=f"tx-{run}",
        topic_labels=f"labels-{run}",
        topic_scores=f"scores-{run}",
        topic_dead_letter=f"dlq-{run}",
        topic_feature_log=f"flog-{run}",
        consumer_group=f"workers-{run}",
        champion_poll_s=0,
    )
    values.update(overrides)
    settings = load_settings(**values)
    kafka.ensure_topics(settings)
    return settings


def event_body(row: pd.Series) -> dict[str, Any]:
    """The `transactions` message of one row of transactions, as a producer writes it."""
    return {
        "transaction_id": int(row["transaction_id"]),
        "tx_datetime": row["tx_datetime"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "customer_id": int(row["customer_id"]),
        "terminal_id": int(row["terminal_id"]),
        "tx_amount": float(row["tx_amount"]),
    }


def start_enricher(
    settings: Settings, port: int = 0, threshold: float | None = None, **http_limits: Any
) -> EnricherServer:
    """The HTTP enricher on the settings' scoring core, served by uvicorn from a thread;
    `http_limits` override the settings' (max_body_bytes=..., read_timeout_s=...)."""
    limits = replace(HttpLimits.from_settings(settings), **http_limits)
    enricher = Enricher(
        build_core(settings),
        ScoringMetrics(),
        settings.score_threshold if threshold is None else threshold,
        EventLimits.from_settings(settings),
        limits,
    )
    return EnricherServer(enricher, "127.0.0.1", port).start()


def stop_enricher(server: EnricherServer) -> None:
    server.stop()
    server.enricher.core.watcher.stop()
