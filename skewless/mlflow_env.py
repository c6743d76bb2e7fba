"""Environment that keeps MLflow offline and quiet, for its server and for every client.

A module of its own, apart from `skewless.services`, so that a registry client can use it
without importing the Kafka and Redis clients that the services package brings in.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # The server's background job runner (huey) is not used here and costs a core at start.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # A tracking server that is down answers within seconds, not after MLflow's default of 7
    # retries with doubling waits and a 120 s timeout (minutes during which a worker's champion
    # poll could not even report the registry as a fault).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def apply_offline_env() -> None:
    """Set the offline variables in this process, keeping any value already set."""
    for variable, value in OFFLINE_ENV.items():
        os.environ.setdefault(variable, value)
