"""`skewless retrain --on-drift` against real Spark, Feast, MLflow and Redis: quiet on an
unshifted served stream, a new champion on a shifted one, picked up by a watcher in one poll."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from monitoring.feature_log import log_path, records_frame, write_chunk
from serving.champion import ChampionWatcher, LoadedModel, load_version
from skewless import registry
from skewless.data import write_transactions
from skewless.feature_store import OFFLINE_TABLES, feast_environment, load_declarations
from skewless.services.process import wait_for
from skewless.settings import Settings, load_settings
from skewless.transaction_features import transaction_features
from skewless_cli.cli import app
from tests.conftest import TrainedPlatform
from training import tracking
from training.backfill import record_path

pytestmark = pytest.mark.integration

NEW_DAYS = 21
"""Days appended after the platform's data: a whole protocol window (train, delay, test)."""
AMOUNT_SHIFT = 3.0
"""The new days' genuine amounts, and the shifted served stream's amounts, are this many times
larger."""
SERVED_FROM = datetime(2026, 5, 13, tzinfo=UTC)
SERVED_DAYS = 7
"""A served week next to the champion's training week: as the monitoring tests find, the
platform's small data drifts on its own further away (the 30-day terminal risk, by the test
week), and an unshifted stream has to be one that did not drift."""
POLL_S = 0.5


@pytest.fixture
def environment() -> Iterator[None]:
    """The command exports the settings it runs with; later tests see the environment as it was."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def retrain_settings(trained_platform: TrainedPlatform, tmp_path: Path) -> Settings:
    """A model name and data folder of this test alone, on the platform's servers and MLflow
    store; the platform's offline tables and backfill record copied over, as after `train`."""
    base = trained_platform.settings
    own = {
        "data_dir": tmp_path / "data",
        "runtime_dir": tmp_path / "runtime",
        "mlflow_tracking_uri": base.tracking_uri,
        "model_name": f"fraud-retrain-{uuid.uuid4().hex[:8]}",
        "champion_poll_s": POLL_S,
    }
    settings = load_settings(**(base.model_dump() | own))
    shutil.copytree(base.data_dir / OFFLINE_TABLES, settings.data_dir / OFFLINE_TABLES)
    assert record_path(settings).exists()
    # The platform's champion, registered again under this test's name from its run (whose
    # reference statistics the drift check reads), is the champion.
    tracking.configure(settings)
    source = f"runs:/{trained_platform.summary.run_id}/{tracking.MODEL_ARTIFACT}"
    version = str(mlflow.register_model(source, settings.model_name).version)
    registry.promote(registry.client(settings), settings.model_name, version)
    return settings


def _with_new_days(platform: TrainedPlatform, folder: Path) -> Path:
    """The platform's data and 21 more days: the last 21 days again, later, the genuine
    amounts tripled. Frauds keep theirs, so large amounts stop meaning fraud and a model
    trained on the new days beats the champion on them. (Tripling every amount is no longer
    such a shift: the models read each amount against the card's average, and the champion
    kept the better test AP on the shifted days.)"""
    raw = platform.transactions
    end = raw["tx_datetime"].max().normalize() + pd.Timedelta(days=1)
    last = raw[raw["tx_datetime"] >= end - pd.Timedelta(days=NEW_DAYS)].copy()
    last["transaction_id"] += raw["transaction_id"].max() + 1
    last["tx_datetime"] += pd.Timedelta(days=NEW_DAYS)
    last.loc[last["tx_fraud"] == 0, "tx_amount"] *= AMOUNT_SHIFT
    return write_transactions(pd.concat([raw, last], ignore_index=True), folder / "tx.parquet")


def _serve_log(
    platform: TrainedPlatform, settings: Settings, model: LoadedModel, amount_factor: float
) -> int:
    """Write a week of feature-log rows as the worker would, scored by `model`, with amounts
    (and the customers' average amounts) multiplied by `amount_factor`."""
    raw = platform.transactions
    week = raw[
        (raw["tx_datetime"] >= SERVED_FROM)
        & (raw["tx_datetime"] < SERVED_FROM + timedelta(days=SERVED_DAYS))
    ].set_index("transaction_id")
    features = week.join(transaction_features(week))
    for declaration in load_declarations(settings):
        table = pd.read_parquet(platform.settings.data_dir / OFFLINE_TABLES / declaration.name)
        columns = list(declaration.feature_names)
        features = features.join(table.set_index(declaration.order_key)[columns])
    shifted = [name for name in model.feature_names if "amount" in name]
    features[shifted] *= amount_factor
    names = list(model.feature_names)
    features = features.reset_index()
    scores = model.score(features[names].to_numpy(dtype="float32"))
    scored_at = datetime.now(UTC).isoformat()
    bodies: list[dict[str, object]] = [
        {
            "model_name": settings.model_name,
            "model_version": model.version,
            "feature_service": settings.feature_service,
            "scored_at": scored_at,
            "transaction_id": int(row["transaction_id"]),
            "customer_id": int(row["customer_id"]),
            "terminal_id": int(row["terminal_id"]),
            "tx_datetime": row["tx_datetime"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "score": float(score),
            "features": {name: float(row[name]) for name in names},
        }
        for (_, row), score in zip(features.iterrows(), scores, strict=True)
    ]
    return write_chunk(records_frame(bodies), log_path(settings))


def _said(result: Result) -> str:
    """The command's own lines (libraries print progress bars on the same output)."""
    return "\n".join(line for line in result.output.splitlines() if line.startswith("retrain:"))


def test_retrain_on_drift_does_nothing_unshifted_and_promotes_when_shifted(
    trained_platform: TrainedPlatform, retrain_settings: Settings, environment: None
) -> None:
    settings = retrain_settings
    client = registry.client(settings)
    name = settings.model_name
    first = registry.champion_version(client, name)
    assert first is not None
    data = _with_new_days(trained_platform, settings.data_dir / "raw")
    env = feast_environment(settings)
    # No model option: the retrain trains the champion's own settings (its 6 epochs among them).
    args = ["retrain", "--on-drift", "--data", str(data)]
    watcher = ChampionWatcher(settings, load_version(settings), POLL_S).start()
    try:
        served = _serve_log(trained_platform, settings, watcher.current, amount_factor=1.0)
        quiet = CliRunner().invoke(app, args, env=env)
        assert quiet.exit_code == 0, quiet.output
        assert f"no drift alert over {served:,} events served by champion v{first}" in _said(quiet)
        assert "nothing to do" in _said(quiet)
        assert len(registry.list_versions(client, name)) == 1

        _serve_log(trained_platform, settings, watcher.current, amount_factor=AMOUNT_SHIFT)
        alerted = CliRunner().invoke(app, args, env=env)
        assert alerted.exit_code == 0, alerted.output
        new = registry.champion_version(client, name)
        assert new is not None and new != first, _said(alerted)
        assert f"drift alert over {served:,} events served by champion v{first}" in _said(alerted)
        assert "amount: PSI" in _said(alerted)
        assert f"retrained version {new} (promoted champion" in _said(alerted)
        assert f"; feedforward with champion v{first}'s settings" in _said(alerted)
        # Only the appended days were computed; the platform's days came from the record.
        assert "customer_spending 21, terminal_risk 21" in _said(alerted)
        # The worker's watcher serves the new champion within one poll (and the load).
        assert wait_for(lambda: watcher.current.version == new, POLL_S + 10)
    finally:
        watcher.stop()
    gate = registry.history(client, name)[-1]
    assert (gate.action, gate.from_version, gate.to_version) == ("gate", first, new)
    run = registry.version_run(client, name, new)
    champion = registry.version_run(client, name, first)
    assert tracking.logged_params(run.data.params) == tracking.logged_params(champion.data.params)
    assert run.data.params["max_epochs"] == "6"
    # The newest window of the data: the appended days; the delay is the declarations'.
    assert run.data.params["window_train_start"].startswith("2026-05-31")
    assert run.data.params["delay_days"] == str(
        max(d.delay_days for d in load_declarations(settings))
    )

    # Nothing was served by the new champion yet: a check now leaves it alone.
    again = CliRunner().invoke(app, args, env=env)
    assert again.exit_code == 0, again.output
    assert f"no events served by champion v{new} yet: nothing to do" in _said(again)


def test_scheduled_retrain_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`retrain --every 1h --on-drift` with no champion: one run says so, then SIGTERM ends
    the wait at once and the command exits 0 with its closing line."""
    settings = load_settings(data_dir=tmp_path / "data", runtime_dir=tmp_path / "runtime")
    data = write_transactions(
        pd.DataFrame(
            {
                "transaction_id": [1],
                "tx_datetime": [pd.Timestamp("2026-04-01T12:00:00Z")],
                "customer_id": [1],
                "terminal_id": [1],
                "tx_amount": [10.0],
                "tx_fraud": [0],
            }
        ).astype({"tx_fraud": "int8", "tx_datetime": "datetime64[us, UTC]"}),
        settings.data_dir / "tx.parquet",
    )
    output = tmp_path / "output.txt"
    env = os.environ | feast_environment(settings) | {"PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", "from skewless_cli.cli import main; main()"]
    args = ["retrain", "--every", "1h", "--on-drift", "--data", str(data)]
    with output.open("w") as sink:
        process = subprocess.Popen([*command, *args], env=env, stdout=sink, stderr=sink)
    try:
        assert wait_for(lambda: "nothing to do" in output.read_text(), 120), output.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, output.read_text()
    finally:
        process.kill()
    said = output.read_text()
    assert "retrain: no champion to check (run `skewless train`): nothing to do" in said
    assert "retrain: stopped after 1 runs, 0 retrained" in said


def test_a_champion_whose_logged_setting_is_unreadable_stops_with_its_name(
    trained_platform: TrainedPlatform, retrain_settings: Settings, environment: None
) -> None:
    """A one-off retrain of a champion whose run logged `hidden_sizes` as text that does not
    parse exits 2 naming the setting and the version, before any training: no traceback, no
    new version. (A schedule logs the failed run and carries on: see `run_every`.)"""
    settings = retrain_settings
    client = registry.client(settings)
    name = settings.model_name
    tracking.configure(settings)
    with mlflow.start_run(run_name="hand-edited") as run:
        mlflow.log_params({"family": "feedforward", "hidden_sizes": "(64,"})
    source = f"runs:/{trained_platform.summary.run_id}/{tracking.MODEL_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run.info.run_id).version
    registry.promote(client, name, str(version))
    data = _with_new_days(trained_platform, settings.data_dir / "raw")

    result = CliRunner().invoke(
        app, ["retrain", "--data", str(data)], env=feast_environment(settings)
    )

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"error: champion v{version} of {name}: logged parameter hidden_sizes='(64,'" in (
        result.output
    )
    assert len(registry.list_versions(client, name)) == 2
