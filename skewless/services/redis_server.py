"""The Redis online store: Debian's `redis-server`, installed if missing, bound to loopback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from skewless.redis_batch import Client
from skewless.services.apt import ensure_package
from skewless.services.process import (
    Endpoint,
    ManagedProcess,
    already_running,
    answers,
    wait_ready,
)
from skewless.settings import Settings

logger = logging.getLogger(__name__)

NAME = "redis"
DEBIAN_PACKAGE = "redis-server"


def ensure_installed() -> str:
    """Path of `redis-server`, from Debian's package."""
    return ensure_package("redis-server", DEBIAN_PACKAGE)


TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)
"""Faults that pass: Redis restarting, loading its append-only file, a reset connection."""
RETRIES = 6
"""redis-py retries a command (a whole pipeline) this often, backing off 50 ms to 1 s (about
4 s in all); a longer outage raises to the caller, whose own policy waits it out."""


def client(settings: Settings) -> Client:
    """A redis-py client for the configured server that retries transient faults itself.

    Every command the platform sends is idempotent (state members and online rows are set,
    not incremented), so a pipeline sent again after a reset connection is safe. With
    `SKEWLESS_REDIS_CLUSTER`, a `redis.RedisCluster` that found the cluster's nodes and slot
    map from the configured node (it connects now, and raises if no node answers).
    """
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    common: dict[str, Any] = {
        "host": settings.redis_host,
        "port": settings.redis_port,
        "password": password,
        "socket_connect_timeout": 2.0,
        "socket_timeout": 30.0,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
    }
    if settings.redis_cluster:
        return redis.RedisCluster(**common)
    return redis.Redis(**common, health_check_interval=30, retry_on_error=list(TRANSIENT_ERRORS))


PROBE_TIMEOUT_S = 2.0


def endpoint(settings: Settings) -> Endpoint:
    """The server as error messages name it."""
    return Endpoint(
        NAME, f"{settings.redis_host}:{settings.redis_port}", Settings.env_name("redis_port")
    )


def _pong(settings: Settings) -> bool:
    """True if the server answers PING with PONG; raises on anything that is not an answer."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    probe_client = redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        password=password,
        socket_timeout=PROBE_TIMEOUT_S,
        socket_connect_timeout=PROBE_TIMEOUT_S,
        retry=Retry(NoBackoff(), retries=0),  # the caller polls; one probe is one attempt
    )
    try:
        return bool(probe_client.ping())
    finally:
        probe_client.close()


def is_ready(settings: Settings) -> bool:
    """True if the server answers PING; any failure means not ready."""
    return answers(lambda: _pong(settings), NAME)


def server_argv(settings: Settings, port: int, data_dir: Path) -> list[str]:
    """`redis-server` on loopback `port`, its append-only file in `data_dir` (created)."""
    binary = ensure_installed()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind", settings.redis_host,
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes",
        "--appendfsync", settings.redis_appendfsync,
        "--daemonize", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip
    if settings.redis_password:
        argv += ["--requirepass", settings.redis_password.get_secret_value()]
    return argv


def start(settings: Settings) -> ManagedProcess:
    """Start Redis unless it already answers; idempotent."""
    process = ManagedProcess(NAME, settings.runtime_dir)
    if already_running(process, lambda: is_ready(settings), endpoint(settings)):
        return process
    data_dir = settings.runtime_dir / "redis"
    process.start(server_argv(settings, settings.redis_port, data_dir))
    wait_ready(
        process, lambda: _pong(settings), settings.service_start_timeout_s, endpoint(settings)
    )
    return process


def stop(settings: Settings) -> bool:
    """Stop our Redis; True if it was running."""
    return ManagedProcess(NAME, settings.runtime_dir).stop()
