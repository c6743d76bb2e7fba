"""The MLflow tracking server: SQLite backend store, local artifact root, loopback only."""

from __future__ import annotations

import logging
import sys
import urllib.request

from skewless.mlflow_env import OFFLINE_ENV
from skewless.services.process import (
    Endpoint,
    ManagedProcess,
    already_running,
    answers,
    wait_ready,
)
from skewless.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["NAME", "OFFLINE_ENV", "endpoint", "is_ready", "start", "stop", "url"]

NAME = "mlflow"


def url(settings: Settings) -> str:
    """Base URL of the server."""
    return f"http://{settings.mlflow_host}:{settings.mlflow_port}"


PROBE_TIMEOUT_S = 2.0


def endpoint(settings: Settings) -> Endpoint:
    """The server as error messages name it."""
    return Endpoint(NAME, url(settings), Settings.env_name("mlflow_port"))


def _health_ok(settings: Settings) -> bool:
    """True if the health endpoint answers 200 OK; raises on anything that is not an answer."""
    with urllib.request.urlopen(f"{url(settings)}/health", timeout=PROBE_TIMEOUT_S) as response:
        return bool(response.status == 200)


def is_ready(settings: Settings) -> bool:
    """True if the server's health endpoint answers OK; any failure means not ready."""
    return answers(lambda: _health_ok(settings), NAME)


def start(settings: Settings) -> ManagedProcess:
    """Start the tracking server unless it already answers; idempotent."""
    process = ManagedProcess(NAME, settings.runtime_dir)
    if already_running(process, lambda: is_ready(settings), endpoint(settings)):
        return process
    settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    allowed = f"{settings.mlflow_host},{settings.mlflow_host}:{settings.mlflow_port}"
    allowed += f",localhost,localhost:{settings.mlflow_port}"
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.mlflow_backend_uri,
        "--default-artifact-root", settings.mlflow_artifact_root.as_uri(),
        "--host", settings.mlflow_host,
        "--port", str(settings.mlflow_port),
        "--workers", "1",
        "--allowed-hosts", allowed,
    ]  # fmt: skip
    process.start(argv, env=OFFLINE_ENV)
    wait_ready(
        process,
        lambda: _health_ok(settings),
        settings.service_start_timeout_s,
        endpoint(settings),
    )
    return process


def stop(settings: Settings) -> bool:
    """Stop the server and its workers; True if it was running."""
    return ManagedProcess(NAME, settings.runtime_dir).stop()
