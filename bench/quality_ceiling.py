"""The protocol's ceiling on simulated data, next to a registered model's figures.

On each of the training pipeline's test folds (the same windows as `skewless train --folds K`)
and on the handbook's protocol test set, prints the frauds per scenario, the *hidden* ones (a
compromised terminal's frauds before any transaction of the compromise is labelled, which no
model can tell from genuine transactions) and the best AUC ROC, average precision and card
precision@100 any model can reach there (`training.ceiling`), and what a model reaches that
tells nothing of a hidden compromise (visible frauds first, the rest at random). Then the same
figures of a registered model version's folds, read from its MLflow run (the champion by
default), and where its AUC ROC goes: for each kind of fraud, its mean rank among the genuine
transactions and the AUC it loses, next to the oracle's (from each fold's logged test scores;
a version trained before folds logged them has only fold 0's, its run's own).

The data set must be `skewless simulate`'s output: the simulation is run again with the given
parameters (the same options and defaults as `skewless simulate`) and compared with the file,
since only the simulation knows which scenario made each fraud.

    python bench/quality_ceiling.py [--data NAME] [--folds 4] [--version N] [--seed 42 ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from skewless import feature_store, registry
from skewless.aggregation import label_delay_days
from skewless.data import DataError, dataset_path, read_transactions
from skewless.registry import METRIC_NAMES, PREDICTIONS_ARTIFACT, PROTOCOL_PREFIX
from skewless.settings import load_settings
from skewless.simulator import SimulationParams, simulate
from training import protocol
from training.ceiling import (
    FRAUD_KINDS,
    FoldCeiling,
    KindLoss,
    protocol_ceiling,
    protocol_test_sets,
    rank_losses,
)

TARGETS = {"auc_roc": 0.88, "average_precision": 0.70, "card_precision_at_100": 0.31}
SHORT = {"auc_roc": "AUC", "average_precision": "AP", "card_precision_at_100": "CP@100"}


def _arguments() -> argparse.Namespace:
    defaults = SimulationParams()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="demo", help="data set name under the data folder")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--version", help="model version to compare (default: the champion)")
    parser.add_argument("--orders", type=int, default=10, help="random tie breaks averaged")
    parser.add_argument("--customers", type=int, default=defaults.n_customers)
    parser.add_argument("--terminals", type=int, default=defaults.n_terminals)
    parser.add_argument("--start-date", type=date.fromisoformat, default=defaults.start_date)
    parser.add_argument("--days", type=int, default=defaults.n_days)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser.parse_args()


def _model_folds(
    settings: Any, version: str | None
) -> tuple[str, list[dict[str, float]], list[pd.DataFrame | None]]:
    """The protocol figures and the test scores of each test fold of `version`'s run (fold 0
    first): its nested `fold-K` runs, or the run itself when it trained one fold. A fold whose
    run logged no scores has None; fold 0 then takes the run's own."""
    client = registry.client(settings)
    if version is None:
        version = registry.champion_version(client, settings.model_name)
        if version is None:
            return "", [], []
    run = registry.version_run(client, settings.model_name, version)
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
    )
    by_fold = {
        int(child.data.params["fold"]): child
        for child in children
        if child.info.run_name.startswith("fold-") and "fold" in child.data.params
    }
    runs = [by_fold[k] for k in sorted(by_fold)] or [run]
    figures = [
        {name: r.data.metrics[PROTOCOL_PREFIX + name] for name in METRIC_NAMES} for r in runs
    ]
    scores = [_predictions(client, r.info.run_id) for r in runs]
    if scores[0] is None:
        scores[0] = _predictions(client, run.info.run_id)
    return version, figures, scores


def _predictions(client: Any, run_id: str) -> pd.DataFrame | None:
    """The test scores a run logged, or None when it logged none."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, folder)
        except (MlflowException, OSError):
            return None
        return pd.read_parquet(Path(path))


def _row(label: str, figures: dict[str, float]) -> str:
    return f"{label:<34}" + "".join(f"{figures[name]:>9.4f}" for name in METRIC_NAMES)


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([row[name] for row in rows])) for name in METRIC_NAMES}


def main() -> int:
    args = _arguments()
    settings = load_settings()
    params = SimulationParams(
        n_customers=args.customers,
        n_terminals=args.terminals,
        start_date=args.start_date,
        n_days=args.days,
        seed=args.seed,
    )
    try:
        data = read_transactions(dataset_path(settings, args.data))
    except DataError as exc:
        print(
            f"quality_ceiling: {exc} (--data names a data set under the data folder)",
            file=sys.stderr,
        )
        return 2
    result = simulate(params)
    columns = list(result.transactions.columns)
    if not data[columns].reset_index(drop=True).equals(result.transactions):
        print(
            f"quality_ceiling: {dataset_path(settings, args.data)} is not what `skewless "
            "simulate` makes with --customers/--terminals/--start-date/--days/--seed as given",
            file=sys.stderr,
        )
        return 2
    declarations = feature_store.load_declarations(settings)
    delay = label_delay_days(declarations)
    history = max(d.horizon.days for d in declarations)
    times = data["tx_datetime"]
    start = times.min().to_pydatetime()
    latest = protocol.split(start, times.max().to_pydatetime(), delay, history_days=history)
    folds = protocol.prequential_folds(latest, args.folds, start, history)
    tests = protocol_test_sets(result, folds, delay)
    ceilings = protocol_ceiling(folds, tests, orders=args.orders)
    version, model, scores = _model_folds(settings, args.version)
    losses = [
        _model_losses(test, scores[k]) if k < len(scores) else None for k, test in enumerate(tests)
    ]

    print(f"label delay {delay} days; protocol test sets; AUC / AP / CP@100")
    print(f"{'fold (test week)':<34}" + "".join(f"{SHORT[name]:>9}" for name in METRIC_NAMES))
    for k, ceiling in enumerate(ceilings):
        _print_fold(k, ceiling, model[k] if k < len(model) else None, losses[k], version)
    print(_row("mean: ceiling", _mean([c.figures for c in ceilings])))
    print(_row("mean: at chance", _mean([c.at_chance for c in ceilings])))
    if len(model) >= len(ceilings):
        print(_row(f"mean: version {version}", _mean(model[: len(ceilings)])))
    print(_row("targets", TARGETS))
    hidden = sum(c.hidden for c in ceilings)
    frauds = sum(c.frauds for c in ceilings)
    print(f"hidden frauds: {hidden} of {frauds} ({hidden / frauds:.1%})")
    if all(loss is not None for loss in losses):
        _print_mean_losses(ceilings, [loss for loss in losses if loss is not None], version)
    return 0


def _model_losses(test: pd.DataFrame, scores: pd.DataFrame | None) -> dict[str, KindLoss] | None:
    """The model's AUC ROC read by kind of fraud on a fold's protocol test set."""
    if scores is None:
        return None
    scored = test.merge(scores[["transaction_id", "score"]], on="transaction_id", how="left")
    if scored["score"].isna().any():
        raise ValueError("the logged test scores miss transactions of the protocol test set")
    return rank_losses(scored)


def _print_fold(
    k: int,
    ceiling: FoldCeiling,
    model: dict[str, float] | None,
    losses: dict[str, KindLoss] | None,
    version: str,
) -> None:
    scenarios = ", ".join(f"{name} {n}" for name, n in ceiling.frauds_by_scenario.items())
    print(
        f"fold {k} ({ceiling.test_start:%Y-%m-%d}): {ceiling.transactions:,} transactions, "
        f"{ceiling.frauds} frauds ({scenarios}), {ceiling.hidden} hidden"
    )
    print(_row("  ceiling", ceiling.figures))
    print(_row("  at chance", ceiling.at_chance))
    if model is not None:
        print(_row(f"  version {version}", model))
    if losses is not None:
        _print_losses(ceiling.losses, losses, version)


def _print_losses(oracle: dict[str, KindLoss], model: dict[str, KindLoss], version: str) -> None:
    """Mean rank and AUC lost per kind of fraud: the model's, then the ceiling's."""
    print(
        f"    {'kind of fraud':<30}{'frauds':>7}  rank: v{version:<4}ceiling"
        f"  AUC lost: v{version:<4}ceiling"
    )
    for kind in FRAUD_KINDS:
        if kind in model:
            mine, best = model[kind], oracle[kind]
            print(
                f"    {kind:<30}{mine.frauds:>7}{mine.mean_rank:>13.4f}{best.mean_rank:>8.4f}"
                f"{mine.auc_loss:>17.4f}{best.auc_loss:>8.4f}"
            )


def _print_mean_losses(
    ceilings: list[FoldCeiling], losses: list[dict[str, KindLoss]], version: str
) -> None:
    """The AUC each kind of fraud loses, averaged over the folds (a kind absent from a fold
    loses nothing there)."""
    print(f"AUC lost per kind of fraud, mean over the folds: version {version} / ceiling")
    for kind in FRAUD_KINDS:
        mine = np.mean([fold[kind].auc_loss if kind in fold else 0.0 for fold in losses])
        best = np.mean([c.losses[kind].auc_loss if kind in c.losses else 0.0 for c in ceilings])
        print(f"  {kind:<32}{mine:>9.4f}{best:>9.4f}")


if __name__ == "__main__":
    sys.exit(main())
