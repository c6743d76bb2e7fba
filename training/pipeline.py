"""`skewless train` and `skewless retrain`: raw transactions to a registered, gated model.

Stages: validate input -> Spark backfill (whole, or only the changed days) -> feast apply ->
point-in-time training set -> torch training -> evaluation on the test window -> MLflow run
and registered version -> quality gate -> materialization into Redis. Each stage's wall time
is kept for the summary.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from rich.progress import Progress, TaskID

from skewless import feature_store, offline_store
from skewless.aggregation import label_delay_days
from skewless.data import DataError, read_transactions
from skewless.model_runtime import ONNX_FILE, REFERENCE_ARTIFACT, OnnxScorer
from skewless.quality import validate_transactions
from skewless.services import redis_server
from skewless.settings import Settings
from skewless.spark import spark_session
from skewless.statistics import reference_statistics, save_statistics
from skewless.stream_state import StreamState
from training import protocol, tracking
from training.backfill import backfill
from training.evaluate import evaluate, plot_precision_recall, plot_roc
from training.materialize import materialize
from training.model import EpochReport, TrainedModel, TrainingParams, train

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

logger = logging.getLogger(__name__)

VALIDATION_SHARE = 0.2
"""The last fifth of the training window (in time) is the early-stopping validation set."""


@dataclass(frozen=True)
class TrainOptions:
    """The command line of `skewless train` (and what `skewless retrain` runs)."""

    data: Path
    train_start: date | None = None
    train_days: int = 7
    delay_days: int | None = None
    """Days between the training and the test window; None: the declarations' label delay."""
    test_days: int = 7
    params: TrainingParams = field(default_factory=TrainingParams)
    materialize: bool = True
    incremental_backfill: bool = False
    """Recompute only the days changed since the last backfill (and those depending on them)."""


@dataclass
class TrainSummary:
    """What `make train` prints at the end."""

    run_id: str = ""
    version: str = ""
    alias: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    recomputed_days: dict[str, int] = field(default_factory=dict)
    """Days of each offline table the backfill computed."""


@contextmanager
def _stage(summary: TrainSummary, name: str) -> Iterator[None]:
    started = time.perf_counter()
    logger.info("stage %s ...", name)
    yield
    summary.stage_seconds[name] = round(time.perf_counter() - started, 2)
    logger.info("stage %s done in %.1f s", name, summary.stage_seconds[name])


def _split_train_validation(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = frame["tx_datetime"].quantile(1 - VALIDATION_SHARE)
    return frame[frame["tx_datetime"] < cut], frame[frame["tx_datetime"] >= cut]


WORKDIR_PREFIX = "skewless-train-"


def run_training(settings: Settings, options: TrainOptions) -> TrainSummary:
    """Run every stage; returns the summary (also logged to the MLflow run).

    Files made on the way (the ONNX export, plots, the champion's download for the gate) live
    in a temporary folder removed at the end, whether the run succeeds or fails.
    """
    with tempfile.TemporaryDirectory(prefix=WORKDIR_PREFIX) as workdir:
        return _run_training(settings, options, Path(workdir))


def _run_training(settings: Settings, options: TrainOptions, workdir: Path) -> TrainSummary:
    summary = TrainSummary()
    with _stage(summary, "validate"):
        raw = read_transactions(options.data)
        report = validate_transactions(raw)
        if not report.success:
            raise DataError(f"{options.data} fails the data-quality suite: {report.describe()}")
        declarations = feature_store.load_declarations(settings)
        history = max(d.horizon.days for d in declarations)
        delay_days = options.delay_days
        if delay_days is None:
            delay_days = label_delay_days(declarations)
            options = replace(options, delay_days=delay_days)  # logged with the run
        windows = protocol.split(
            raw["tx_datetime"].min().to_pydatetime(),
            raw["tx_datetime"].max().to_pydatetime(),
            delay_days=delay_days,
            train_start=options.train_start,
            train_days=options.train_days,
            test_days=options.test_days,
            history_days=history,
        )
        summary.windows = windows.as_params()
        del raw
    spark = spark_session(settings)
    with _stage(summary, "backfill"):
        for table in backfill(settings, options.data, options.incremental_backfill):
            summary.rows[table.name] = table.rows
            summary.recomputed_days[table.name] = len(table.days)
    with _stage(summary, "feast_apply"):
        feature_store.apply(settings)
        store = feature_store.open_store(settings)
        service = store.get_feature_service(settings.feature_service)
        features = offline_store.feature_names(service)
    with _stage(summary, "training_set"):
        entities = offline_store.entity_frame(
            spark, options.data, windows.train_start, windows.test_end
        )
        in_delay = (F.col("tx_datetime") >= F.lit(windows.train_end)) & (
            F.col("tx_datetime") < F.lit(windows.test_start)
        )
        entities = entities.where(~in_delay)  # the delay week is neither trained nor tested on
        frame = offline_store.historical_features(store, service, entities)
        train_frame = frame[frame["tx_datetime"] < windows.train_end]
        test_frame = frame[frame["tx_datetime"] >= windows.test_start].reset_index(drop=True)
        fit_frame, val_frame = _split_train_validation(train_frame)
        summary.rows.update(train=len(fit_frame), validation=len(val_frame), test=len(test_frame))

    client = tracking.configure(settings)
    with mlflow.start_run() as run:
        summary.run_id = run.info.run_id
        _log_context(settings, options, store, service, summary, report.results, workdir)
        with _stage(summary, "train"):
            model = _train_with_progress(fit_frame, val_frame, features, options.params)
        with _stage(summary, "evaluate"):
            test_matrix = test_frame[features].to_numpy(dtype="float32")
            version = tracking.log_model(model, settings, fit_frame, workdir)
            scorer = OnnxScorer(workdir / ONNX_FILE)
            scored = test_frame.assign(score=scorer.score(test_matrix))
            summary.metrics = evaluate(scored)
            mlflow.log_metrics(summary.metrics)
            _log_test_artifacts(scored, workdir)
            # The reference is the whole training window (whole days, so the weekday mix of a
            # served week matches it), scored by the model being registered.
            seen = train_frame.assign(
                score=scorer.score(train_frame[features].to_numpy(dtype="float32"))
            )
            stats = reference_statistics(seen, [*features, "score"], tail_features=["score"])
            mlflow.log_artifact(str(save_statistics(stats, workdir / REFERENCE_ARTIFACT)))
        with _stage(summary, "gate"):
            decision = tracking.apply_gate(
                client,
                settings,
                version,
                test_matrix,
                test_frame["tx_fraud"].to_numpy(),
                summary.metrics["test_average_precision"],
                workdir,
            )
            summary.version = version
            summary.alias = "champion" if decision.promoted else "challenger"
        if options.materialize:
            with _stage(summary, "materialize"):
                materialize_with_progress(spark, settings, options.data)
        mlflow.log_dict(summary.stage_seconds, "stage_seconds.json")
    return summary


def _log_context(
    settings: Settings,
    options: TrainOptions,
    store: FeatureStore,
    service: FeatureService,
    summary: TrainSummary,
    validation_results: list[dict[str, object]],
    workdir: Path,
) -> None:
    params = {f"window_{key}": value for key, value in summary.windows.items()}
    params.update(
        train_days=str(options.train_days),
        delay_days=str(options.delay_days),
        test_days=str(options.test_days),
    )
    params.update({key: str(value) for key, value in vars(options.params).items()})
    mlflow.log_params(params)
    mlflow.set_tags(
        {
            "feature_service": settings.feature_service,
            "feast_definition_hash": tracking.definition_hash(store, service),
            "data_path": str(options.data),
            "data_fingerprint": tracking.file_fingerprint(options.data),
            "git_commit": tracking.git_commit(Path(__file__).parent),
            **{f"rows_{key}": str(value) for key, value in summary.rows.items()},
        }
    )
    path = workdir / "input_validation.json"
    path.write_text(json.dumps(validation_results, default=str, indent=1))
    mlflow.log_artifact(str(path))


def _train_with_progress(
    fit: pd.DataFrame, validation: pd.DataFrame, features: list[str], params: TrainingParams
) -> TrainedModel:
    with Progress(transient=True) as progress:
        task = progress.add_task("training", total=params.max_epochs)

        def on_epoch(report: EpochReport) -> None:
            mlflow.log_metrics(
                {
                    "train_loss": report.train_loss,
                    "val_loss": report.val_loss,
                    "val_average_precision": report.val_average_precision,
                    "val_auc_roc": report.val_auc_roc,
                },
                step=report.epoch,
            )
            progress.update(
                task,
                advance=1,
                description=f"epoch {report.epoch} val AP {report.val_average_precision:.3f}",
            )

        return train(
            fit[features],
            fit["tx_fraud"].to_numpy(),
            validation[features],
            validation["tx_fraud"].to_numpy(),
            params,
            on_epoch=on_epoch,
        )


def _log_test_artifacts(scored: pd.DataFrame, workdir: Path) -> None:
    predictions = workdir / "test_predictions.parquet"
    scored[["transaction_id", "score"]].to_parquet(predictions, index=False)
    mlflow.log_artifact(str(predictions))
    labels = scored["tx_fraud"].to_numpy()
    scores = scored["score"].to_numpy()
    mlflow.log_artifact(str(plot_roc(labels, scores, workdir / "roc_curve.png")))
    mlflow.log_artifact(str(plot_precision_recall(labels, scores, workdir / "pr_curve.png")))


def materialize_with_progress(
    spark: SparkSession, settings: Settings, data: Path, until: datetime | None = None
) -> dict[str, int]:
    """`materialize` with a progress bar per view, then the streaming state up to `until`.

    Without `until`, the state is that of the end of the data, so a live stream carries on
    from there.
    """
    with Progress(transient=True) as progress:
        tasks: dict[str, TaskID] = {}

        def on_rows(view: str, done: int, total: int) -> None:
            if view not in tasks:
                tasks[view] = progress.add_task(f"materialize {view}", total=total)
            progress.update(tasks[view], completed=done)

        written = materialize(spark, settings, until=until, on_rows=on_rows)
    raw = read_transactions(data)
    moment = until or (raw["tx_datetime"].max() + pd.Timedelta(microseconds=1)).to_pydatetime()
    declarations = feature_store.load_declarations(settings)
    state = StreamState(
        redis_server.client(settings),
        declarations,
        settings.stream_state_prefix,
        feature_store.load_state_tiles(settings),
        timedelta(seconds=settings.state_allowed_lateness_s),
    )
    delay = label_delay_days(declarations)
    written["stream_state_events"] = state.initialize(raw, moment, label_delay_days=delay)
    feature_store.record_materialization(settings, declarations, moment)
    return written
