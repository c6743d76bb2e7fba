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
}


def apply_offline_env() -> None:
    """Set the offline variables in this process, keeping any value already set."""
    for variable, value in OFFLINE_ENV.items():
        os.environ.setdefault(variable, value)
