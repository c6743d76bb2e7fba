"""The REST registry client when no MLflow server answers: an error naming the setting."""

from __future__ import annotations

import socket

import pytest

from skewless import registry


def test_an_unreachable_server_is_a_registry_error_naming_the_setting() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = registry.RestRegistry(f"http://127.0.0.1:{port}")
    with pytest.raises(registry.RegistryError, match="SKEWLESS_MLFLOW_TRACKING_URI"):
        registry.champion_version(client, "fraud-detector")  # a fault, not "no champion"
