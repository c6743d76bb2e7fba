"""Local servers of the platform (Kafka, Redis, MLflow, Prometheus), started and stopped as one.

The server modules (and the Kafka and Redis clients they import) are imported by the functions
that use them, so that importing `skewless.services.process` stays cheap for commands that never
touch a server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from skewless.services.process import ManagedProcess, ServiceError
from skewless.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["ServiceError", "ServiceStatus", "down", "install", "status", "up"]


@dataclass(frozen=True)
class ServiceStatus:
    """What one server looks like from outside."""

    name: str
    address: str
    pid: int | None
    healthy: bool


def install(settings: Settings) -> None:
    """Install what the platform needs (Java check, OpenMP's runtime for LightGBM, Redis, Kafka
    jars, Prometheus, a headless browser to check the monitoring report); idempotent."""
    from skewless.services import kafka, prometheus_server, redis_server
    from skewless.services.apt import ensure_library, ensure_package
    from skewless.services.java import check_java

    check_java()
    ensure_library("gomp", "libgomp1")
    redis_server.ensure_installed()
    kafka.ensure_installed(settings)
    prometheus_server.ensure_installed()
    ensure_package("chromium", "chromium")


def up(settings: Settings, with_mlflow: bool = True, with_prometheus: bool = True) -> None:
    """Start every server that is not running yet and wait until each answers (with
    `redis_cluster`, a local three-node Redis Cluster instead of the single Redis)."""
    from skewless.services import (
        kafka,
        mlflow_server,
        prometheus_server,
        redis_cluster,
        redis_server,
    )
    from skewless.services.java import check_java

    check_java()
    if settings.redis_cluster:
        redis_cluster.start(settings)
    else:
        redis_server.start(settings)
    kafka.start(settings)
    if with_mlflow:
        mlflow_server.start(settings)
    if with_prometheus:
        prometheus_server.start(settings)


def down(settings: Settings) -> list[str]:
    """Stop every server we started; returns the names of those that were running."""
    from skewless.services import (
        kafka,
        mlflow_server,
        prometheus_server,
        redis_cluster,
        redis_server,
    )

    stopped = []
    for name, stop in (
        ("prometheus", prometheus_server.stop),
        ("mlflow", mlflow_server.stop),
        ("kafka", kafka.stop),
        ("redis", redis_server.stop),
        ("redis-cluster", redis_cluster.stop),
    ):
        if stop(settings):
            stopped.append(name)
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    """Pid and health of each server."""
    from skewless.services import (
        kafka,
        mlflow_server,
        prometheus_server,
        redis_cluster,
        redis_server,
    )

    redis_address = f"{settings.redis_host}:{settings.redis_port}"
    redis_check: tuple[str, str, Callable[[Settings], bool]]
    if settings.redis_cluster:  # (the pid shown is the first node's)
        redis_check = (
            redis_cluster.node_process(settings, settings.redis_port).name,
            redis_address,
            redis_cluster.is_ready,
        )
    else:
        redis_check = (redis_server.NAME, redis_address, redis_server.is_ready)
    checks = (
        (kafka.NAME, settings.kafka_bootstrap, kafka.is_ready),
        redis_check,
        (mlflow_server.NAME, mlflow_server.url(settings), mlflow_server.is_ready),
        (prometheus_server.NAME, prometheus_server.url(settings), prometheus_server.is_ready),
    )
    return [
        ServiceStatus(
            name, address, ManagedProcess(name, settings.runtime_dir).pid(), probe(settings)
        )
        for name, address, probe in checks
    ]
