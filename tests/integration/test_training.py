"""The training pipeline against real Spark, Feast, MLflow (SQLite) and Redis."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from serving.champion import load_version
from skewless import feature_store, offline_store, registry
from skewless.data import write_transactions
from skewless.model_runtime import download_model, reference_statistics
from skewless.online_store import OnlineView
from skewless.services import redis_server
from skewless.settings import Settings, load_settings
from skewless.simulator import SimulationParams, simulate
from skewless.spark import spark_session
from tests.conftest import TrainedPlatform
from training import search, tracking
from training.backfill import run_backfill
from training.model import TrainingParams
from training.pipeline import (
    TrainOptions,
    TrainSummary,
    materialize_with_progress,
    run_training,
)

pytestmark = pytest.mark.integration

START = date(2026, 4, 1)
DAYS = 60


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    params = SimulationParams(n_customers=400, n_terminals=800, n_days=DAYS, start_date=START)
    return simulate(params).transactions


def _settings(base: Settings, root: Path) -> Settings:
    return load_settings(
        data_dir=root / "data",
        runtime_dir=root / "runtime",
        redis_port=base.redis_port,
        kafka_port=base.kafka_port,
    )


TEMP_PREFIXES = ("skewless-train-", "skewless-model-", "skewless-reference-")


@pytest.fixture
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of this test alone (others' runs share /tmp), made the default."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _our_temp_folders(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(TEMP_PREFIXES))


@pytest.fixture(scope="module")
def trained(trained_platform: TrainedPlatform) -> tuple[Settings, TrainSummary, Path]:
    return trained_platform.settings, trained_platform.summary, trained_platform.data


def test_point_in_time_features_ignore_what_was_not_known(
    redis_service: Settings, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    """Changing the future, or labels still inside the delay, leaves past features unchanged."""
    cutoff = pd.Timestamp(datetime(2026, 5, 20, tzinfo=UTC))
    delay = pd.Timedelta(days=7)
    changed = transactions.copy()
    future = changed["tx_datetime"] > cutoff
    changed.loc[future, "tx_amount"] *= 10
    changed.loc[future, "tx_fraud"] = 1 - changed.loc[future, "tx_fraud"]
    unknown_label = (changed["tx_datetime"] > cutoff - delay) & ~future
    changed.loc[unknown_label, "tx_fraud"] = 1 - changed.loc[unknown_label, "tx_fraud"]
    extra = changed[future].head(500).copy()
    extra["transaction_id"] += 10_000_000
    extra["tx_datetime"] += pd.Timedelta(seconds=1)
    changed = pd.concat([changed, extra]).sort_values(["tx_datetime", "transaction_id"])
    assert unknown_label.sum() > 100

    results = []
    for name, frame in (("original", transactions), ("changed", changed)):
        settings = _settings(redis_service, tmp_path / name)
        data = write_transactions(frame, settings.data_dir / "raw" / "transactions.parquet")
        spark = spark_session(settings)
        run_backfill(settings, data)
        feature_store.apply(settings)
        store = feature_store.open_store(settings)
        service = store.get_feature_service(settings.feature_service)
        start = cutoff.to_pydatetime() - timedelta(days=5)
        entities = offline_store.entity_frame(spark, data, start, cutoff.to_pydatetime())
        entities = entities.where(entities.tx_datetime <= cutoff.to_pydatetime())
        features = offline_store.historical_features(store, service, entities)
        results.append(features.set_index("transaction_id")[offline_store.feature_names(service)])
    original, after = results
    assert len(original) > 500
    pd.testing.assert_frame_equal(original, after.loc[original.index])
    # The check can fail: the features did see the label flips once the delay passed.
    assert (original["terminal_risk_30d"] > 0).any()


def test_same_second_transactions_get_their_own_backfill_rows(
    redis_service: Settings, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    """Two transactions of one card in the same second: one row each, each with its own
    features, equal to the backfill's rows for that transaction (the point-in-time join on
    (entity, time) alone gave two rows each, or the other one's features)."""
    day = pd.Timestamp(datetime(2026, 5, 20, tzinfo=UTC))
    on_day = transactions[transactions["tx_datetime"].between(day, day + pd.Timedelta(days=1))]
    first, second = on_day.iloc[10], on_day.iloc[50]
    next_id = int(transactions["transaction_id"].max()) + 1
    twins = pd.DataFrame(
        [
            # Same card and second as `first`, another terminal; then same card, same terminal
            # and same second as `second`.
            {**first.to_dict(), "transaction_id": next_id, "terminal_id": second["terminal_id"]},
            {**second.to_dict(), "transaction_id": next_id + 1, "tx_amount": 3.0},
        ]
    ).astype(transactions.dtypes.to_dict())
    frame = pd.concat([transactions, twins]).sort_values(["tx_datetime", "transaction_id"])
    settings = _settings(redis_service, tmp_path)
    data = write_transactions(frame, settings.data_dir / "raw" / "transactions.parquet")
    run_backfill(settings, data)
    feature_store.apply(settings)
    store = feature_store.open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    start, end = day.to_pydatetime(), (day + pd.Timedelta(days=1)).to_pydatetime()
    entities = offline_store.entity_frame(spark_session(settings), data, start, end)
    features = offline_store.historical_features(store, service, entities)

    asked = frame[(frame["tx_datetime"] >= day) & (frame["tx_datetime"] < end)]
    assert len(features) == len(asked)
    assert sorted(features["transaction_id"]) == sorted(asked["transaction_id"])
    rows = features.set_index("transaction_id")
    pairs = [(int(first["transaction_id"]), next_id), (int(second["transaction_id"]), next_id + 1)]
    for earlier, later in pairs:
        assert rows.loc[earlier, "tx_datetime"] == rows.loc[later, "tx_datetime"]
        # The later id counts the earlier one in its windows, not the other way round.
        counts = rows["customer_tx_count_1d"].astype(float)
        assert counts[later] == counts[earlier] + 1
    for declaration in feature_store.load_declarations(settings):
        table = pd.read_parquet(feature_store.offline_table_path(settings, declaration.name))
        table = table.set_index("transaction_id").loc[rows.index]
        names = list(declaration.feature_names)
        pd.testing.assert_frame_equal(
            rows[names], table[names], check_dtype=False, check_names=False
        )


def test_train_registers_a_version_with_everything_logged(
    trained: tuple[Settings, TrainSummary, Path],
) -> None:
    settings, summary, data = trained
    client = tracking.configure(settings)
    run = client.get_run(summary.run_id)
    assert summary.version == "1"
    assert summary.alias == "champion"
    assert set(summary.metrics) == set(registry.METRICS)
    for name in registry.METRICS:
        assert 0.0 <= run.data.metrics[name] <= 1.0
    assert run.data.metrics["test_protocol_auc_roc"] > 0.6
    assert 0 < summary.rows["test_protocol"] < summary.rows["test"]
    assert run.data.tags["rows_test_protocol"] == str(summary.rows["test_protocol"])
    history = client.get_metric_history(summary.run_id, "val_average_precision")
    assert len(history) >= 2
    assert {"window_train_start", "window_test_end", "train_days", "delay_days", "seed"} <= set(
        run.data.params
    )
    assert run.data.params["seed"] == "42"
    tags = run.data.tags
    assert tags["feature_service"] == "fraud_model_v1"
    assert len(tags["feast_definition_hash"]) == 64
    assert tags["data_fingerprint"] == tracking.file_fingerprint(data)
    assert len(tags["git_commit"]) in (40, len("unknown"))

    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=summary.run_id))
    predictions = pd.read_parquet(artifacts / "test_predictions.parquet")
    assert list(predictions.columns) == ["transaction_id", "score", "known_compromised"]
    assert len(predictions) == summary.rows["test"]
    assert (~predictions["known_compromised"]).sum() == summary.rows["test_protocol"]
    assert predictions["transaction_id"].is_unique
    raw = pd.read_parquet(data)
    windows = {key: pd.Timestamp(value) for key, value in summary.windows.items()}
    in_test = raw["tx_datetime"].between(windows["test_start"], windows["test_end"], "left")
    assert sorted(predictions["transaction_id"]) == sorted(raw.loc[in_test, "transaction_id"])
    in_train = raw["tx_datetime"].between(windows["train_start"], windows["train_end"], "left")
    assert summary.rows["train"] + summary.rows["validation"] == in_train.sum()
    for name in ("roc_curve.png", "pr_curve.png", "input_validation.json"):
        assert (artifacts / name).stat().st_size > 0
    statistics = json.loads((artifacts / "reference_statistics.json").read_text())
    assert len(statistics) == 24  # the 23 features and the score
    assert {"inner_edges", "histogram", "null_rate", "mean", "std"} <= set(statistics["amount"])
    assert "score" in statistics

    model_dir = download_model(settings, summary.version, artifacts / "m")
    assert (model_dir / "extra_files" / "model.onnx").exists()
    spec = json.loads((model_dir / "extra_files" / "model_spec.json").read_text())
    assert spec["feature_service"] == "fraud_model_v1"
    assert len(spec["feature_names"]) == 23
    info = mlflow.models.get_model_info(f"models:/{settings.model_name}/{summary.version}")
    assert info.signature is not None
    assert info.saved_input_example_info is not None


def test_materialize_writes_latest_features_into_redis(
    trained: tuple[Settings, TrainSummary, Path],
) -> None:
    settings, summary, data = trained
    assert "materialize" in summary.stage_seconds
    # Other tests move the online rows back in time (--until); state as of the data's end,
    # and a key an older layout left (`skewless materialize --remove-other-layouts`) removed:
    customers = feature_store.load_declarations(settings)[0]
    client = redis_server.client(settings)
    older = f"{settings.stream_state_prefix}:t1.000000:{{{customers.name}:7}}:e"
    client.set(older, b"an older version's")
    written = materialize_with_progress(spark_session(settings), settings, data, None, True)
    assert written["other_layout_keys_removed"] == 1
    assert not client.exists(older)
    raw = pd.read_parquet(data)
    view = OnlineView.of("skewless", customers)
    last = raw.sort_values(["tx_datetime", "transaction_id"]).groupby("customer_id").tail(1)
    sample = last.head(20)
    values, stamps = view.read(client, sample["customer_id"].tolist())
    assert not np.isnan(values).any()
    assert [s.replace(microsecond=0) if s else None for s in stamps] == [
        t.to_pydatetime() for t in sample["tx_datetime"]
    ]


def test_gate_keeps_champion_against_worse_model_and_rollback(
    trained: tuple[Settings, TrainSummary, Path], private_tempdir: Path
) -> None:
    settings, first, data = trained
    worse = TrainOptions(
        data=data,
        params=replace(TrainingParams(), max_epochs=1, learning_rate=1e-9, seed=7),
        materialize=False,
    )
    second = run_training(settings, worse)
    assert _our_temp_folders(private_tempdir) == []  # the run's working folder is gone
    client = tracking.configure(settings)
    assert second.alias == "challenger"
    assert registry.champion_version(client, settings.model_name) == first.version
    gate = json.loads(client.get_model_version(settings.model_name, second.version).tags["gate"])
    assert gate["champion_score"] > gate["challenger_score"]

    registry.promote(client, settings.model_name, second.version)
    assert registry.champion_version(client, settings.model_name) == second.version
    assert registry.rollback(client, settings.model_name) == first.version
    assert registry.champion_version(client, settings.model_name) == first.version
    moves = [
        (m.action, m.from_version, m.to_version)
        for m in registry.history(client, settings.model_name)
    ]
    assert moves[0] == ("gate", None, first.version)  # the first training's promotion
    assert moves[-2:] == [
        ("promote", first.version, second.version),
        ("rollback", second.version, first.version),
    ]
    with pytest.raises(registry.RegistryError):
        registry.rollback(client, settings.model_name)
    rows = registry.list_versions(client, settings.model_name)
    assert [row.version for row in rows] == [second.version, first.version]
    assert "champion" in rows[1].aliases
    assert "challenger" in rows[0].aliases


def test_model_and_reference_downloads_leave_no_temporary_folder(
    trained: tuple[Settings, TrainSummary, Path], private_tempdir: Path
) -> None:
    settings, summary, _ = trained
    model = load_version(settings, summary.version)
    statistics = reference_statistics(settings, summary.version)
    assert _our_temp_folders(private_tempdir) == []
    # What was read from the removed folders is still usable.
    assert model.score(np.zeros((2, len(model.feature_names)), dtype=np.float32)).shape[0] == 2
    assert "score" in statistics


def test_prequential_folds_are_nested_runs_and_the_gate_reads_them_all(
    redis_service: Settings, tmp_path: Path, private_tempdir: Path
) -> None:
    """Two folds a week apart: each a nested run, means and deviations on the parent, the
    latest fold's model registered; a second training is gated on the same two folds."""
    params = SimulationParams(n_customers=300, n_terminals=600, n_days=66, start_date=START)
    settings = _settings(redis_service, tmp_path)
    data = write_transactions(
        simulate(params).transactions, settings.data_dir / "raw" / "transactions.parquet"
    )
    options = TrainOptions(
        data=data, params=replace(TrainingParams(), max_epochs=3), materialize=False, folds=2
    )
    first = run_training(settings, options)
    client = tracking.configure(settings)
    run = client.get_run(first.run_id)
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{first.run_id}'"
    )
    by_fold = {child.data.params["fold"]: child for child in children}
    assert set(by_fold) == {"0", "1"}
    starts = [pd.Timestamp(by_fold[k].data.params["window_test_start"]) for k in ("0", "1")]
    assert starts[0] - starts[1] == pd.Timedelta(days=7)
    assert starts[0] == pd.Timestamp(first.windows["test_start"])
    assert len(first.fold_metrics) == 2
    for key in registry.METRICS:
        values = [by_fold[k].data.metrics[key] for k in ("0", "1")]
        assert run.data.metrics[key] == pytest.approx(values[0])  # the registered fold's
        assert run.data.metrics[f"{key}_mean"] == pytest.approx(np.mean(values))
        assert run.data.metrics[f"{key}_std"] == pytest.approx(np.std(values))
    assert run.data.params["folds"] == "2"
    assert client.get_metric_history(by_fold["1"].info.run_id, "val_average_precision")
    # Each fold's run holds its own test window's scores; the registered fold's are also the
    # parent run's.
    raw = pd.read_parquet(data)
    fold_scores = {}
    for k, start in zip(("0", "1"), starts, strict=True):
        folder = mlflow.artifacts.download_artifacts(run_id=by_fold[k].info.run_id)
        fold_scores[k] = pd.read_parquet(Path(folder) / registry.PREDICTIONS_ARTIFACT)
        in_test = raw["tx_datetime"].between(start, start + pd.Timedelta(days=7), "left")
        assert sorted(fold_scores[k]["transaction_id"]) == sorted(
            raw.loc[in_test, "transaction_id"]
        )
    parent = mlflow.artifacts.download_artifacts(run_id=first.run_id)
    pd.testing.assert_frame_equal(
        pd.read_parquet(Path(parent) / registry.PREDICTIONS_ARTIFACT), fold_scores["0"]
    )

    second = run_training(settings, replace(options, params=replace(options.params, seed=3)))
    gate = json.loads(client.get_model_version(settings.model_name, second.version).tags["gate"])
    # The champion trained on fold 0's training days, which no test window of the folds
    # overlaps: both are scored on both folds.
    assert gate["folds"] == [0, 1]
    assert gate["champion_version"] == first.version
    assert gate["challenger_score"] == pytest.approx(second.metrics[f"{registry.GATE_METRIC}_mean"])
    assert gate["champion_score"] is not None


def test_search_chooses_on_validation_folds_before_the_test_folds(
    redis_service: Settings, tmp_path: Path, private_tempdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--search` on a three-candidate grid and the ensemble of two families: each candidate a
    nested run scored on validation folds whose windows all end before the test folds' test
    windows; the choice is the best validation AP, trained on the test folds and registered;
    the logistic regression is the baseline there."""
    monkeypatch.setattr(
        search,
        "SEARCH_SPACE",
        {
            "feedforward": {"hidden_sizes": ((16,),), "imbalance": ("pos_weight",)},
            "logistic_regression": {"hidden_sizes": ((),)},
            "boosted_trees": {"hidden_sizes": ((),), "trees": (20,), "tree_depth": (3,),
                              "learning_rate": (0.1,)},
        },
    )  # fmt: skip
    params = SimulationParams(n_customers=300, n_terminals=600, n_days=88, start_date=START)
    settings = _settings(redis_service, tmp_path)
    data = write_transactions(
        simulate(params).transactions, settings.data_dir / "raw" / "transactions.parquet"
    )
    options = TrainOptions(
        data=data,
        params=replace(TrainingParams(), max_epochs=3),
        materialize=False,
        folds=2,
        search=True,
        search_workers=2,
    )
    summary = run_training(settings, options)
    client = tracking.configure(settings)
    run = client.get_run(summary.run_id)
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{summary.run_id}'"
    )
    candidates = {
        c.data.params["candidate"]: c for c in children if c.data.tags.get("role") == "candidate"
    }
    assert set(candidates) == {
        "feedforward-16-dropout0-lr0.001-pos_weight",
        "logistic_regression-lr0.001-none",
        "boosted_trees-20x3-l2_0-lr0.1-none",
        "ensemble:feedforward-16-dropout0-lr0.001-pos_weight+boosted_trees-20x3-l2_0-lr0.1-none",
    }
    selection_ap = f"{search.SELECTION_METRIC}_mean"
    for candidate in candidates.values():
        metrics = candidate.data.metrics
        assert {selection_ap, f"{search.SELECTION_METRIC}_std"} <= set(metrics)
        folds = [metrics[f"fold_{k}_{search.SELECTION_METRIC}"] for k in (0, 1)]
        assert metrics[selection_ap] == pytest.approx(np.mean(folds))
    best = max(candidates.values(), key=lambda c: c.data.metrics[selection_ap])
    params_logged = run.data.params
    assert params_logged["selection_chosen"] == best.data.params["candidate"]
    assert (
        summary.selection is not None
        and summary.selection.chosen == params_logged["selection_chosen"]
    )
    # The registered model is the choice, trained on the test folds.
    chosen_params = {k: v for k, v in best.data.params.items() if k != "candidate"}
    assert {k: params_logged.get(k) for k in chosen_params} == chosen_params
    assert params_logged["family"] == run.data.tags["model_family"] == best.data.params["family"]
    # Every validation window ends before any test window starts (its labels known by then).
    test_folds = [c for c in children if "fold" in c.data.params]
    assert len(test_folds) == 2
    first_test = min(pd.Timestamp(c.data.params["window_test_start"]) for c in test_folds)
    oldest_train_end = min(pd.Timestamp(c.data.params["window_train_end"]) for c in test_folds)
    for k in (0, 1):
        test_end = pd.Timestamp(params_logged[f"validation_fold_{k}_test_end"])
        assert test_end <= oldest_train_end < first_test
    assert pd.Timestamp(params_logged["validation_fold_0_test_end"]) == oldest_train_end
    # The logistic-regression baseline on the same test folds.
    assert summary.selection.baseline == "logistic_regression-lr0.001-none"
    assert len(summary.selection.baseline_fold_metrics) == 2
    baseline_ap = f"baseline_{registry.GATE_METRIC}_mean"
    assert run.data.metrics[baseline_ap] == pytest.approx(
        np.mean([m[registry.GATE_METRIC] for m in summary.selection.baseline_fold_metrics])
    )
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=summary.run_id))
    space = json.loads((artifacts / "search_space.json").read_text())
    assert space["feedforward"]["hidden_sizes"] == [[16]]
    assert set(json.loads((artifacts / "search_results.json").read_text())) == set(candidates)
    assert summary.version == "1"
