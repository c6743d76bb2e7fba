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
from mlflow import MlflowClient

from skewless import registry
from skewless.settings import Settings, load_settings

pytestmark = pytest.mark.integration

MODEL = "fraud-detector-registry-test"
HEAVY_PACKAGES = ("torch", "sklearn", "onnx", "onnxruntime", "feast")
"""What the registry commands must not import (the training stack and its libraries)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A SQLite MLflow store with three registered versions of MODEL and no champion."""
    root = tmp_path_factory.mktemp("registry")
    settings = load_settings(runtime_dir=root / "runtime", model_name=MODEL)
    client = registry.client(settings)
    experiment = client.create_experiment("registry-test", (root / "artifacts").as_uri())
    client.create_registered_model(MODEL)
    for i in range(3):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "test_protocol_average_precision", 0.5 + i / 10)
        client.set_terminated(run.info.run_id)
        client.create_model_version(MODEL, (root / "artifacts").as_uri(), run.info.run_id)
    return settings


@pytest.fixture
def fresh_model(store: Settings) -> Iterator[MlflowClient]:
    """The store's client, with the model's champion alias and history removed after the test."""
    client = registry.client(store)
    yield client
    model = client.get_registered_model(MODEL)
    for key in model.tags:
        client.delete_registered_model_tag(MODEL, key)
    if registry.CHAMPION in model.aliases:
        client.delete_registered_model_alias(MODEL, registry.CHAMPION)


def _moves(client: MlflowClient) -> list[tuple[str, str | None, str]]:
    return [(m.action, m.from_version, m.to_version) for m in registry.history(client, MODEL)]


def test_champion_history_keeps_every_move(fresh_model: MlflowClient) -> None:
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


def test_promoting_the_champion_again_records_nothing(fresh_model: MlflowClient) -> None:
    registry.promote(fresh_model, MODEL, "2")
    registry.promote(fresh_model, MODEL, "2")
    assert _moves(fresh_model) == [("promote", None, "2")]
    with pytest.raises(registry.RegistryError, match="no version 9"):
        registry.promote(fresh_model, MODEL, "9")


def test_history_in_the_older_format_is_kept_and_appended_to(fresh_model: MlflowClient) -> None:
    client = fresh_model
    client.set_registered_model_tag(MODEL, registry.HISTORY_TAG, '["1", "2"]')
    client.set_registered_model_alias(MODEL, registry.CHAMPION, "2")
    assert registry.rollback(client, MODEL) == "1"
    assert _moves(client) == [("promote", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
    assert client.get_registered_model(MODEL).tags[registry.HISTORY_TAG] == '["1", "2"]'


def _skewless(settings: Settings, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        **os.environ,
        "SKEWLESS_RUNTIME_DIR": str(settings.runtime_dir),
        "SKEWLESS_MLFLOW_TRACKING_URI": settings.tracking_uri,
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


def test_model_commands_import_no_training_stack(
    store: Settings, fresh_model: MlflowClient
) -> None:
    registry.promote(fresh_model, MODEL, "1")
    registry.promote(fresh_model, MODEL, "2")
    for args in (("model", "list"), ("model", "rollback"), ("model", "history")):
        result, seconds = _skewless(store, *args)
        assert result.returncode == 0, result.stderr[-2000:]
        imported = _imported(result.stderr)
        assert "mlflow" in imported  # the check reads what it should
        assert _heavy(imported) == set(), args
        print(f"skewless {' '.join(args)}: {seconds:.2f} s")
    listed, _ = _skewless(store, "model", "list")
    assert re.search(r"│ 1 +│ champion", listed.stdout), listed.stdout
    assert _moves(fresh_model)[-1] == ("rollback", "2", "1")
