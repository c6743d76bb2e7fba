"""The champion history and the registry commands against a real MLflow store (SQLite).

Versions are registered without training (a run with test metrics, an artifact folder), so
these tests exercise the registry alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from skewless import registry
from skewless.registry import RegistryClient
from skewless.services import mlflow_server
from skewless.settings import Settings, load_settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration

MODEL = "fraud-detector-registry-test"
HEAVY_PACKAGES = ("torch", "sklearn", "onnx", "onnxruntime", "feast")
"""What the registry commands must not import (the training stack and its libraries)."""


@pytest.fixture(scope="module")
def store(mlflow_service: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session's MLflow store (SQLite, served by the session's MLflow server) with three
    registered versions of MODEL and no champion."""
    artifacts = tmp_path_factory.mktemp("registry-artifacts")
    settings = load_settings(**(mlflow_service.model_dump() | {"model_name": MODEL}))
    client = registry.client(settings)
    experiment = client.create_experiment("registry-test", artifacts.as_uri())
    client.create_registered_model(MODEL)
    for i in range(3):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "test_protocol_average_precision", 0.5 + i / 10)
        client.set_terminated(run.info.run_id)
        client.create_model_version(MODEL, artifacts.as_uri(), run.info.run_id)
    return settings


@pytest.fixture(params=["sqlite", "rest"])
def fresh_model(store: Settings, request: pytest.FixtureRequest) -> Iterator[RegistryClient]:
    """A client of the store, MLflow's own on the SQLite file or the REST one through the
    server; the model's champion alias and history are removed after the test."""
    if request.param == "rest":
        yield registry.RestRegistry(mlflow_server.url(store))
    else:
        yield registry.client(store)
    direct = registry.client(store)
    model = direct.get_registered_model(MODEL)
    for key in model.tags:
        direct.delete_registered_model_tag(MODEL, key)
    if registry.CHAMPION in model.aliases:
        direct.delete_registered_model_alias(MODEL, registry.CHAMPION)


def _moves(client: RegistryClient) -> list[tuple[str, str | None, str]]:
    return [(m.action, m.from_version, m.to_version) for m in registry.history(client, MODEL)]


def test_champion_history_keeps_every_move(fresh_model: RegistryClient) -> None:
    client = fresh_model
    started = datetime.now(UTC).replace(microsecond=0)
    registry.promote(client, MODEL, "1", action=registry.GATE)
    registry.promote(client, MODEL, "2")
    assert registry.rollback(client, MODEL) == "1"
    assert registry.champion_version(client, MODEL) == "1"
    first_three = registry.history(client, MODEL)
    assert _moves(client) == [("gate", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
    for move in first_three:
        assert move.by == registry.operator()
        assert (
            started <= datetime.fromisoformat(move.at) <= datetime.now(UTC) + timedelta(seconds=1)
        )
    assert [m.seq for m in first_three] == [1, 2, 3]
    with pytest.raises(registry.RegistryError):
        registry.rollback(client, MODEL)  # v1 was the first champion

    # Back further: 1 -> 2 -> 3, then two rollbacks walk 3 -> 2 -> 1.
    registry.promote(client, MODEL, "2")
    registry.promote(client, MODEL, "3")
    assert registry.rollback(client, MODEL) == "2"
    assert registry.rollback(client, MODEL) == "1"
    history = registry.history(client, MODEL)
    assert history[:3] == first_three  # earlier entries are never rewritten
    assert [(m.action, m.from_version, m.to_version) for m in history[3:]] == [
        ("promote", "1", "2"),
        ("promote", "2", "3"),
        ("rollback", "3", "2"),
        ("rollback", "2", "1"),
    ]


def test_promoting_the_champion_again_records_nothing(fresh_model: RegistryClient) -> None:
    registry.promote(fresh_model, MODEL, "2")
    registry.promote(fresh_model, MODEL, "2")
    assert _moves(fresh_model) == [("promote", None, "2")]
    with pytest.raises(registry.RegistryError, match="no version 9"):
        registry.promote(fresh_model, MODEL, "9")


def test_history_in_the_older_format_is_kept_and_appended_to(fresh_model: RegistryClient) -> None:
    client = fresh_model
    client.set_registered_model_tag(MODEL, registry.HISTORY_TAG, '["1", "2"]')
    client.set_registered_model_alias(MODEL, registry.CHAMPION, "2")
    assert registry.rollback(client, MODEL) == "1"
    assert _moves(client) == [("promote", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
    assert client.get_registered_model(MODEL).tags[registry.HISTORY_TAG] == '["1", "2"]'


def _skewless(
    settings: Settings, *args: str, mlflow_port: int
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        **os.environ,
        "SKEWLESS_RUNTIME_DIR": str(settings.runtime_dir),
        "SKEWLESS_MLFLOW_PORT": str(mlflow_port),
        "SKEWLESS_MODEL_NAME": MODEL,
        "COLUMNS": "200",
    }
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "skewless", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return result, time.perf_counter() - started


def _imported(importtime_output: str) -> set[str]:
    """Module names from `python -X importtime` lines: 'import time: self | cumulative | name'."""
    return {
        match.group(1)
        for match in re.finditer(
            r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", importtime_output, re.M
        )
    }


def _heavy(imported: set[str]) -> set[str]:
    return {
        name
        for name in imported
        if name.split(".")[0] in HEAVY_PACKAGES or name.split(".")[0] == "training"
    }


@pytest.mark.parametrize("server", ["answers", "absent"])
def test_model_commands_import_no_training_stack(
    store: Settings, fresh_model: RegistryClient, server: str
) -> None:
    """With the MLflow server up the commands speak REST and do not even import `mlflow`;
    without it they read the SQLite store through MLflowClient, with the same answers."""
    port = store.mlflow_port if server == "answers" else free_port()
    registry.promote(fresh_model, MODEL, "1")
    registry.promote(fresh_model, MODEL, "2")
    for args in (("model", "list"), ("model", "rollback"), ("model", "history")):
        result, seconds = _skewless(store, *args, mlflow_port=port)
        assert result.returncode == 0, result.stderr[-2000:]
        imported = _imported(result.stderr)
        assert "skewless.registry" in imported  # the check reads what it should
        assert ("mlflow" in imported) == (server == "absent"), args
        assert _heavy(imported) == set(), args
        print(f"skewless {' '.join(args)} (server {server}): {seconds:.2f} s")
    listed, _ = _skewless(store, "model", "list", mlflow_port=port)
    assert re.search(r"│ 1 +│ champion +│ - +│ 0\.5000", listed.stdout), listed.stdout
    assert re.search(r"│ 3 +│ +│ - +│ 0\.7000", listed.stdout), listed.stdout
    assert _moves(fresh_model)[-1] == ("rollback", "2", "1")
    promoted, _ = _skewless(store, "model", "promote", "9", mlflow_port=port)
    assert promoted.returncode == 1
    assert "has no version 9" in promoted.stderr
