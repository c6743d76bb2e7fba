"""`skewless train` and `skewless retrain`: raw transactions to a registered, gated model.

Stages: validate input -> Spark backfill (whole, or only the changed days) -> feast apply ->
point-in-time training set -> [model selection on validation folds: `training.search`] ->
torch training -> evaluation on the test window (on the handbook's protocol, and on every
transaction: `training.evaluate`) -> MLflow run and registered version -> quality gate ->
materialization into Redis. Each stage's wall time is kept for the summary.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from rich.console import Console
from rich.progress import Progress, TaskID

from skewless import feature_store, offline_store
from skewless.aggregation import label_delay_days
from skewless.data import DataError, read_transactions
from skewless.history import offline_history
from skewless.known_frauds import first_fraud_days, known_compromised
from skewless.model_runtime import ONNX_FILE, REFERENCE_ARTIFACT, OnnxScorer
from skewless.quality import validate_transactions
from skewless.registry import GATE_METRIC, PREDICTIONS_ARTIFACT
from skewless.settings import Settings
from skewless.spark import spark_session
from skewless.statistics import reference_statistics, save_statistics
from training import protocol, search, tracking
from training.backfill import backfill
from training.evaluate import evaluate, plot_precision_recall, plot_roc
from training.materialize import load_stream_state, materialize
from training.model import (
    LOGISTIC_REGRESSION,
    EpochReport,
    ModelInputs,
    TrainedModel,
    TrainingParams,
    export_onnx,
    train,
)

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
    folds: int = 1
    """Prequential folds, each shifted back by one test window (`protocol.prequential_folds`);
    the handbook's chapters 5-7 average 4. The version registered is fold 0's (the latest)."""
    search: bool = False
    """Choose the model (family and hyperparameters, `search.SEARCH_SPACE` over `params`) on
    validation folds that end before the test folds (`protocol.validation_folds`), then train
    the choice on the test folds; the best logistic regression is evaluated there as baseline."""
    search_workers: int = 2
    """Processes training the candidates (one torch thread each)."""


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
    fold_metrics: list[dict[str, float]] = field(default_factory=list)
    """The test metrics of each fold, fold 0 (the registered version's) first."""
    selection: SelectionSummary | None = None
    """What the model selection chose, with `TrainOptions.search`."""


@dataclass(frozen=True)
class SelectionSummary:
    """The search's choice and its logistic-regression baseline on the test folds."""

    candidates: int
    chosen: str
    family: str
    validation: dict[str, float]
    """The chosen candidate's `validation_protocol_*_mean` and `_std` over the validation folds."""
    baseline: str
    baseline_fold_metrics: list[dict[str, float]]
    """The best logistic regression's test metrics on each test fold (trained like the choice)."""


@dataclass(frozen=True)
class Fold:
    """One fold's windows, its training and test rows, and the cards' first fraud days."""

    index: int
    windows: protocol.TimeSplit
    train: pd.DataFrame
    test: pd.DataFrame
    first_frauds: pd.Series


@dataclass(frozen=True)
class FoldResult:
    """A fold's model, its fit rows, its scored test rows (`known_compromised` flagged)."""

    fold: Fold
    model: TrainedModel
    fit: pd.DataFrame
    scored: pd.DataFrame
    metrics: dict[str, float]

    @property
    def protocol_rows(self) -> npt.NDArray[np.bool_]:
        return ~self.scored["known_compromised"].to_numpy(dtype=bool)


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
        data_start = raw["tx_datetime"].min().to_pydatetime()
        windows = protocol.split(
            data_start,
            raw["tx_datetime"].max().to_pydatetime(),
            delay_days=delay_days,
            train_start=options.train_start,
            train_days=options.train_days,
            test_days=options.test_days,
            history_days=history,
        )
        fold_windows = protocol.prequential_folds(windows, options.folds, data_start, history)
        selection_windows = (
            protocol.validation_folds(fold_windows, data_start, history) if options.search else []
        )
        all_windows = fold_windows + selection_windows
        summary.windows = windows.as_params()
        # Each fold's labels from its training window's start on: the cards known compromised
        # on a test day are those with a fraud up to the day's label horizon (`known_frauds`).
        first_frauds = [
            first_fraud_days(raw[_within(raw, w.train_start, w.test_end)]) for w in all_windows
        ]
        raw = raw[raw["tx_datetime"] < windows.test_end]  # (what a history may look back on)
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
        sequence = feature_store.load_history(settings)
        inputs = ModelInputs(
            tuple(features),
            sequence.column_names if sequence else (),
            sequence.length if sequence else 0,
            feature_store.load_log_ratios(settings),
        )
        inputs.require_history(options.params)
    with _stage(summary, "training_set"):
        entities = offline_store.entity_frame(
            spark, options.data, all_windows[-1].train_start, windows.test_end
        )
        time = F.col("tx_datetime")
        needed = F.lit(False)  # a delay week no fold trains or tests on is not read
        for w in all_windows:
            for start, end in ((w.train_start, w.train_end), (w.test_start, w.test_end)):
                needed = needed | ((time >= F.lit(start)) & (time < F.lit(end)))
        frame = offline_store.historical_features(store, service, entities.where(needed))
        if sequence is not None:  # every model may read it, and the gate's champion too
            vectors = offline_store.transaction_vectors(settings, raw, declarations)
            earlier = offline_history(vectors, sequence, wanted=frame["transaction_id"])
            frame = frame.join(earlier, on="transaction_id")
            del vectors, earlier
        del raw
        folds = [
            Fold(
                index,
                w,
                frame[_within(frame, w.train_start, w.train_end)].reset_index(drop=True),
                frame[_within(frame, w.test_start, w.test_end)].reset_index(drop=True),
                first_frauds[index],
            )
            for index, w in enumerate(fold_windows)
        ]
        selection_folds = [
            Fold(
                index,
                w,
                frame[_within(frame, w.train_start, w.train_end)].reset_index(drop=True),
                frame[_within(frame, w.test_start, w.test_end)].reset_index(drop=True),
                first_frauds[len(fold_windows) + index],
            )
            for index, w in enumerate(selection_windows)
        ]
        del frame

    client = tracking.configure(settings)
    with mlflow.start_run() as run:
        summary.run_id = run.info.run_id
        _log_context(settings, options, store, service, summary, report.results, workdir)
        mlflow.log_param("log_ratios", ",".join(ratio.name for ratio in inputs.ratios))
        candidates: list[search.CandidateResult] = []
        if options.search:
            with _stage(summary, "select"):
                candidates = _select(selection_folds, inputs, options, delay_days)
            options = replace(options, params=search.choose(candidates).candidate.params)
        mlflow.log_params(tracking.model_params(options.params))
        results = []
        for fold in folds:
            with _stage(summary, "train" if fold.index == 0 else f"train_fold_{fold.index}"):
                results.append(
                    _train_fold(fold, inputs, options, delay_days, workdir, nested=len(folds) > 1)
                )
        latest = results[0]
        summary.fold_metrics = [result.metrics for result in results]
        if candidates:
            with _stage(summary, "baseline"):
                summary.selection = _baseline(
                    candidates, summary.fold_metrics, folds, inputs, options, delay_days, workdir
                )
        summary.rows.update(
            train=len(latest.fit),
            validation=len(latest.fold.train) - len(latest.fit),
            test=len(latest.scored),
            test_protocol=int(latest.protocol_rows.sum()),
        )
        mlflow.set_tag("rows_test_protocol", str(summary.rows["test_protocol"]))
        with _stage(summary, "evaluate"):
            version = tracking.log_model(latest.model, settings, latest.fit, workdir)
            summary.metrics = dict(latest.metrics)
            if len(results) > 1:
                summary.metrics |= fold_statistics(summary.fold_metrics)
            mlflow.log_metrics(summary.metrics)
            _log_test_artifacts(latest.scored, workdir)
            # The reference is the whole training window (whole days, so the weekday mix of a
            # served week matches it), scored by the model being registered.
            scorer = OnnxScorer(workdir / ONNX_FILE)
            train_frame = latest.fold.train
            columns = list(scorer.feature_names)
            seen = train_frame.assign(
                score=scorer.score(train_frame[columns].to_numpy(dtype="float32"))
            )
            stats = reference_statistics(seen, [*columns, "score"], tail_features=["score"])
            mlflow.log_artifact(str(save_statistics(stats, workdir / REFERENCE_ARTIFACT)))
        with _stage(summary, "gate"):
            gate_folds = [
                tracking.GateFold(
                    result.fold.windows.test_start,
                    result.fold.windows.test_end,
                    result.scored.loc[result.protocol_rows, list(inputs.columns_of_all())],
                    result.scored.loc[result.protocol_rows, "tx_fraud"].to_numpy(),
                    result.metrics[GATE_METRIC],
                )
                for result in results
            ]
            decision = tracking.apply_gate(client, settings, version, gate_folds, workdir)
            summary.version = version
            summary.alias = "champion" if decision.promoted else "challenger"
        if options.materialize:
            with _stage(summary, "materialize"):
                materialize_with_progress(spark, settings, options.data)
        mlflow.log_dict(summary.stage_seconds, "stage_seconds.json")
    return summary


def _within(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.Series:
    return (frame["tx_datetime"] >= start) & (frame["tx_datetime"] < end)


def fold_statistics(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """Mean and (population) standard deviation over the folds of each test metric, as
    `<metric>_mean` and `<metric>_std`."""
    result = {}
    for key in fold_metrics[0]:
        values = np.array([metrics[key] for metrics in fold_metrics], dtype=np.float64)
        result[f"{key}_mean"] = float(values.mean())
        result[f"{key}_std"] = float(values.std())
    return result


def _train_fold(
    fold: Fold,
    inputs: ModelInputs,
    options: TrainOptions,
    delay_days: int,
    workdir: Path,
    nested: bool,
    log_epochs: bool = True,
) -> FoldResult:
    """Train on the fold's training window and evaluate on its test window.

    With several folds, each fold is a nested MLflow run (its windows, epochs and metrics);
    with one, the epochs go to the run itself (unless `log_epochs` is off).
    """
    fit, validation = _split_train_validation(fold.train)
    run = mlflow.start_run(run_name=f"fold-{fold.index}", nested=True) if nested else nullcontext()
    with run:
        if nested:
            params = {f"window_{key}": value for key, value in fold.windows.as_params().items()}
            mlflow.log_params({"fold": str(fold.index), **params})
        model = _train_with_progress(fit, validation, inputs, options.params, log_epochs)
        folder = workdir / f"fold-{fold.index}"
        scorer = OnnxScorer(export_onnx(model, folder / ONNX_FILE))
        known = known_compromised(fold.test, fold.first_frauds, delay_days)
        columns = inputs.columns(options.params)
        scored = fold.test.assign(
            score=scorer.score(fold.test[columns].to_numpy(dtype="float32")),
            known_compromised=known,
        )
        logger.info("fold %d (test %s):", fold.index, f"{fold.windows.test_start:%Y-%m-%d}")
        metrics = evaluate(scored, known)
        if nested:
            mlflow.log_metrics(metrics)
            _log_predictions(scored, folder)
            mlflow.set_tags(
                {"rows_test": str(len(scored)), "rows_test_protocol": str((~known).sum())}
            )
    return FoldResult(fold, model, fit, scored, metrics)


def _select(
    folds: list[Fold], inputs: ModelInputs, options: TrainOptions, delay_days: int
) -> list[search.CandidateResult]:
    """Score the grid on the validation folds: a nested run per candidate, the search space,
    every candidate's figures and the choice on the parent run."""
    prepared = []
    for fold in folds:
        fit, early_stopping = _split_train_validation(fold.train)
        known = known_compromised(fold.test, fold.first_frauds, delay_days)
        prepared.append(search.SelectionFold(fold.index, fit, early_stopping, fold.test, known))
    grid = search.candidates(options.params, with_history=bool(inputs.history))
    logger.info(
        "model selection: %d candidates x %d validation folds (test weeks %s), %d workers",
        len(grid),
        len(folds),
        ", ".join(f"{fold.windows.test_start:%Y-%m-%d}" for fold in folds),
        options.search_workers,
    )

    results = search.run_search(
        grid,
        prepared,
        inputs,
        options.search_workers,
        on_result=tracking.log_candidate,
    )
    for ensemble in search.ensembles_of_families(results, prepared):
        logger.info("candidate %s: validation AP %.4f", ensemble.candidate.name, ensemble.score)
        tracking.log_candidate(ensemble)
        results.append(ensemble)
    chosen = search.choose(results)
    logger.info(
        "chosen on the validation folds: %s (%s %.4f)",
        chosen.candidate.name,
        search.SELECTION_METRIC,
        chosen.score,
    )
    tracking.log_selection(results, chosen, [fold.windows for fold in folds])
    return results


def _baseline(
    results: list[search.CandidateResult],
    chosen_fold_metrics: list[dict[str, float]],
    folds: list[Fold],
    inputs: ModelInputs,
    options: TrainOptions,
    delay_days: int,
    workdir: Path,
) -> SelectionSummary:
    """The best logistic regression of the search on the test folds (a nested run, not
    registered; its exports in their own folder): its `baseline_*` means and deviations go on
    the parent run."""
    chosen = search.choose(results)
    baseline = search.best_of_family(results, LOGISTIC_REGRESSION) or chosen
    if baseline is chosen:
        fold_metrics = chosen_fold_metrics
    else:
        with mlflow.start_run(run_name=f"baseline-{baseline.candidate.name}", nested=True):
            mlflow.set_tag("role", "baseline")
            mlflow.log_params(
                {"candidate": baseline.candidate.name}
                | tracking.model_params(baseline.candidate.params)
            )
            params = replace(options, params=baseline.candidate.params)
            folder = workdir / "baseline"
            fold_metrics = [
                _train_fold(fold, inputs, params, delay_days, folder, False, False).metrics
                for fold in folds
            ]
            metrics = fold_statistics(fold_metrics)
            for index, figures in enumerate(fold_metrics):
                metrics |= {f"fold_{index}_{key}": value for key, value in figures.items()}
            mlflow.log_metrics(metrics)
    mlflow.log_metrics(
        {f"baseline_{key}": value for key, value in fold_statistics(fold_metrics).items()}
    )
    mlflow.log_param("baseline", baseline.candidate.name)
    return SelectionSummary(
        candidates=len(results),
        chosen=chosen.candidate.name,
        family=chosen.candidate.params.family,
        validation=chosen.statistics(),
        baseline=baseline.candidate.name,
        baseline_fold_metrics=fold_metrics,
    )


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
        folds=str(options.folds),
        train_days=str(options.train_days),
        delay_days=str(options.delay_days),
        test_days=str(options.test_days),
    )
    params.update(search=str(options.search))
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


def _progress() -> Progress:
    """A transient progress bar on a terminal; none when the output is a file or a pipe, where
    the stage lines say what runs (rich would leave an empty line there)."""
    return Progress(transient=True, disable=not Console().is_terminal)


def _train_with_progress(
    fit: pd.DataFrame,
    validation: pd.DataFrame,
    inputs: ModelInputs,
    params: TrainingParams,
    log_epochs: bool = True,
) -> TrainedModel:
    with _progress() as progress:
        task = progress.add_task("training", total=params.max_epochs)

        def on_epoch(report: EpochReport) -> None:
            if log_epochs:
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

        columns = inputs.columns(params)
        return train(
            fit[columns],
            fit["tx_fraud"].to_numpy(),
            validation[columns],
            validation["tx_fraud"].to_numpy(),
            params,
            on_epoch=on_epoch,
            history_steps=inputs.history_steps,
            step_width=inputs.step_width,
            ratios=inputs.ratios,
        )


def _log_predictions(scored: pd.DataFrame, folder: Path) -> None:
    """The test window's scores, and which cards the protocol leaves out, in the active run."""
    predictions = folder / PREDICTIONS_ARTIFACT
    scored[["transaction_id", "score", "known_compromised"]].to_parquet(predictions, index=False)
    mlflow.log_artifact(str(predictions))


def _log_test_artifacts(scored: pd.DataFrame, workdir: Path) -> None:
    _log_predictions(scored, workdir)
    unknown = scored[~scored["known_compromised"]]  # the plots show the protocol's figures
    labels = unknown["tx_fraud"].to_numpy()
    scores = unknown["score"].to_numpy()
    mlflow.log_artifact(str(plot_roc(labels, scores, workdir / "roc_curve.png")))
    mlflow.log_artifact(str(plot_precision_recall(labels, scores, workdir / "pr_curve.png")))


def materialize_with_progress(
    spark: SparkSession,
    settings: Settings,
    data: Path,
    until: datetime | None = None,
    remove_other_layouts: bool = False,
) -> dict[str, int]:
    """`materialize` with a progress bar per view, then the streaming state (windows and the
    declared transaction history) up to `until`, and with `remove_other_layouts` the state's
    keys in other layouts removed (`load_stream_state`).

    Without `until`, the state is that of the end of the data, so a live stream carries on
    from there.
    """
    with _progress() as progress:
        tasks: dict[str, TaskID] = {}

        def on_rows(view: str, done: int, total: int) -> None:
            if view not in tasks:
                tasks[view] = progress.add_task(f"materialize {view}", total=total)
            progress.update(tasks[view], completed=done)

        written = materialize(spark, settings, until=until, on_rows=on_rows)
    raw = read_transactions(data)
    moment = until or (raw["tx_datetime"].max() + pd.Timedelta(microseconds=1)).to_pydatetime()
    declarations = feature_store.load_declarations(settings)
    written |= load_stream_state(settings, raw, moment, remove_other_layouts)
    feature_store.record_materialization(settings, declarations, moment)
    return written
