"""Model selection on validation folds, as the Fraud Detection Handbook's chapter 5 does it.

A small grid of candidates (`candidates`: feed-forward networks, logistic regressions, boosted
trees and, when the feature repository declares a transaction history, sequence models over it,
all torch modules with their preprocessing inside, so the winner exports and serves the same
way) is trained on each validation fold (`protocol.validation_folds`, which end before the test
folds) and scored on the fold's protocol test set; `choose` keeps the best mean validation
`validation_protocol_average_precision`, the gate's metric. The test folds are never seen here.

Candidates x folds run in worker processes (one torch thread each), the folds shipped to each
worker once; the pipeline logs the results to MLflow.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from skewless.registry import METRIC_NAMES, PROTOCOL_PREFIX
from training.evaluate import evaluate
from training.model import (
    BOOSTED_TREES,
    FEEDFORWARD,
    SEQUENCE,
    ModelInputs,
    TrainingParams,
    predict,
    train,
)

logger = logging.getLogger(__name__)

VALIDATION_PREFIX = "validation_protocol_"
"""The protocol metrics measured on a validation fold's test window."""
SELECTION_METRIC = f"{VALIDATION_PREFIX}average_precision"

FEEDFORWARD_GRID: dict[str, tuple[Any, ...]] = {
    "hidden_sizes": ((64, 32), (128, 64)),
    "dropout": (0.0, 0.2),
    "learning_rate": (1e-3, 3e-3),
    "imbalance": ("none", "pos_weight"),
}
LOGISTIC_GRID: dict[str, tuple[Any, ...]] = {
    "hidden_sizes": ((),),
    "learning_rate": (1e-3, 1e-2),
    "imbalance": ("none", "pos_weight", "oversample"),
}
SEQUENCE_GRID: dict[str, tuple[Any, ...]] = {
    "history_units": (32,),
    "hidden_sizes": ((64,), (128, 64)),
    "dropout": (0.2,),
    "learning_rate": (3e-3,),
    "imbalance": ("none", "pos_weight"),
}
"""Every network early-stops on the last fifth of its training week (`TrainingParams`'
patience, up to `max_epochs`); the epoch kept is logged per fold. The sequence grid is small:
a GRU costs about 4 times a feed-forward network to train here."""
BOOSTED_TREES_GRID: dict[str, tuple[Any, ...]] = {
    "hidden_sizes": ((),),
    "trees": (200,),
    "tree_depth": (3, 6),
    "learning_rate": (0.05,),
    "tree_l2": (0.0, 5.0),
}
"""LightGBM's trees train a fixed number of rounds (no early stopping). A learning rate of 0.3,
as the handbook's XGBoost, made LightGBM's first trees overshoot on 0.9% fraud here (validation
AP 0.32 at depth 3, 50 trees)."""
SEARCH_SPACE = {
    "feedforward": FEEDFORWARD_GRID,
    "logistic_regression": LOGISTIC_GRID,
    "sequence": SEQUENCE_GRID,
    "boosted_trees": BOOSTED_TREES_GRID,
}


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: a readable name and the params it trains with."""

    name: str
    params: TrainingParams


def candidate_name(params: TrainingParams) -> str:
    """e.g. `feedforward-64x32-dropout0.2-lr0.001-pos_weight`, `logistic_regression-lr0.01-none`,
    `boosted_trees-200x6-l2_5-lr0.05-none`;
    an ensemble's lists its members' after `ensemble:`, joined by `+`."""
    if params.members:
        return "ensemble:" + "+".join(candidate_name(member) for member in params.members)
    parts: list[str] = [params.family]
    if params.trees:
        parts += [f"{params.trees}x{params.tree_depth}", f"l2_{params.tree_l2:g}"]
    if params.history_units:
        parts.append(f"gru{params.history_units}")
    if params.hidden_sizes:
        parts += ["x".join(map(str, params.hidden_sizes)), f"dropout{params.dropout:g}"]
    return "-".join([*parts, f"lr{params.learning_rate:g}", params.imbalance])


def candidates(base: TrainingParams, with_history: bool = True) -> list[Candidate]:
    """The grid of `SEARCH_SPACE` over `base` (its seed, epochs, patience, batch size); the
    sequence models only `with_history` (a declared transaction history)."""
    result = []
    base = replace(base, history_units=0)
    for family, grid in SEARCH_SPACE.items():
        if family == SEQUENCE and not with_history:
            continue
        for values in itertools.product(*grid.values()):
            params = replace(base, **dict(zip(grid, values, strict=True)))
            result.append(Candidate(candidate_name(params), params))
    return result


ENSEMBLE_FAMILIES = (FEEDFORWARD, SEQUENCE, BOOSTED_TREES)
"""The ensemble candidates (`ensembles_of_families`): the best of two or more of these
families, scored from the members' own scores."""


def search_space() -> dict[str, dict[str, list[Any]]]:
    """The grid as plain lists, and the ensemble candidate's members, for logging."""
    space: dict[str, dict[str, list[Any]]] = {
        family: {
            key: [list(value) if isinstance(value, tuple) else value for value in values]
            for key, values in grid.items()
        }
        for family, grid in SEARCH_SPACE.items()
    }
    return space | {"ensemble": {"members": [f"the best {family}" for family in ENSEMBLE_FAMILIES]}}


@dataclass(frozen=True)
class SelectionFold:
    """A validation fold ready to train on: fit and early-stopping rows, scored test rows."""

    index: int
    fit: pd.DataFrame
    early_stopping: pd.DataFrame
    test: pd.DataFrame
    known_compromised: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class FoldScore:
    """One candidate on one validation fold."""

    fold: int
    metrics: dict[str, float]
    """`VALIDATION_PREFIX` + each metric name, on the fold's protocol test set."""
    best_epoch: int
    epochs: int
    seconds: float
    scores: npt.NDArray[np.float32]
    """The fold's test rows' scores (not logged: what an ensemble of candidates averages)."""


@dataclass(frozen=True)
class CandidateResult:
    """A candidate's scores on every validation fold, fold 0 (the latest) first."""

    candidate: Candidate
    folds: tuple[FoldScore, ...]

    def statistics(self) -> dict[str, float]:
        """Mean and population standard deviation over the folds of each validation metric."""
        result = {}
        for key in self.folds[0].metrics:
            values = np.array([fold.metrics[key] for fold in self.folds], dtype=np.float64)
            result[f"{key}_mean"] = float(values.mean())
            result[f"{key}_std"] = float(values.std())
        return result

    @property
    def score(self) -> float:
        """What the selection maximises: the mean validation protocol average precision."""
        return self.statistics()[f"{SELECTION_METRIC}_mean"]


def score_on_fold(params: TrainingParams, fold: SelectionFold, inputs: ModelInputs) -> FoldScore:
    """Train `params` on the fold's training week, score its test week on the protocol."""
    started = time.perf_counter()
    columns = inputs.columns(params)
    model = train(
        fold.fit[columns],
        fold.fit["tx_fraud"].to_numpy(),
        fold.early_stopping[columns],
        fold.early_stopping["tx_fraud"].to_numpy(),
        params,
        history_steps=inputs.history_steps,
        step_width=inputs.step_width,
        ratios=inputs.ratios,
    )
    scores = predict(model, fold.test[columns])
    return FoldScore(
        fold.index,
        _validation_metrics(fold, scores),
        model.best_epoch,
        len(model.history),
        round(time.perf_counter() - started, 2),
        scores,
    )


def _validation_metrics(fold: SelectionFold, scores: npt.NDArray[np.float32]) -> dict[str, float]:
    metrics = evaluate(fold.test.assign(score=scores), fold.known_compromised)
    return {VALIDATION_PREFIX + name: metrics[PROTOCOL_PREFIX + name] for name in METRIC_NAMES}


def ensembles_of_families(
    results: list[CandidateResult], folds: list[SelectionFold]
) -> list[CandidateResult]:
    """Every ensemble of the best candidates (`choose`'s rule within each family) of two or
    more `ENSEMBLE_FAMILIES`, pairs first: the mean of their probabilities, scored on each
    validation fold from the members' own scores there, so nothing trains again. A family the
    grid lacks takes no part.

    The exported ensemble computes the same mean in float32, as these scores are."""
    bests = [best_of_family(results, family) for family in ENSEMBLE_FAMILIES]
    available = [best for best in bests if best is not None]
    return [
        _ensemble(members, folds)
        for size in range(2, len(available) + 1)
        for members in itertools.combinations(available, size)
    ]


def _ensemble(members: tuple[CandidateResult, ...], folds: list[SelectionFold]) -> CandidateResult:
    """The mean of `members`' probabilities on each fold, scored there."""
    params = TrainingParams(members=tuple(member.candidate.params for member in members))
    scores = []
    for position, fold in enumerate(folds):
        parts = [member.folds[position] for member in members]
        mean = np.stack([part.scores for part in parts]).mean(axis=0)
        scores.append(
            FoldScore(
                fold.index,
                _validation_metrics(fold, mean),
                parts[-1].best_epoch,
                sum(part.epochs for part in parts),
                round(sum(part.seconds for part in parts), 2),
                mean,
            )
        )
    return CandidateResult(Candidate(candidate_name(params), params), tuple(scores))


_WORKER_FOLDS: dict[str, tuple[list[SelectionFold], ModelInputs]] = {}
"""A worker process's folds and input columns, shipped once by the pool's initializer."""


def _load_folds(folds: list[SelectionFold], inputs: ModelInputs) -> None:
    _WORKER_FOLDS["folds"] = (folds, inputs)


def _score_in_worker(params: TrainingParams, fold_position: int) -> FoldScore:
    folds, inputs = _WORKER_FOLDS["folds"]
    return score_on_fold(params, folds[fold_position], inputs)


def run_search(
    grid: list[Candidate],
    folds: list[SelectionFold],
    inputs: ModelInputs,
    workers: int = 1,
    on_result: Callable[[CandidateResult], None] | None = None,
) -> list[CandidateResult]:
    """Score every candidate on every fold, in `workers` processes (1: in this one).

    `on_result` is called, in this process and in grid order, as each candidate completes.
    """
    tasks = [(c, position) for c in range(len(grid)) for position in range(len(folds))]
    scores: dict[tuple[int, int], FoldScore] = {}
    results: list[CandidateResult] = []

    def collect(task: tuple[int, int], score: FoldScore) -> None:
        scores[task] = score
        while len(results) < len(grid) and all(
            (len(results), p) in scores for p in range(len(folds))
        ):
            candidate = grid[len(results)]
            result = CandidateResult(
                candidate, tuple(scores[(len(results), p)] for p in range(len(folds)))
            )
            results.append(result)
            logger.info(
                "candidate %d/%d %s: validation AP %.4f",
                len(results),
                len(grid),
                candidate.name,
                result.score,
            )
            if on_result is not None:
                on_result(result)

    if workers <= 1:
        for c, position in tasks:
            collect((c, position), score_on_fold(grid[c].params, folds[position], inputs))
        return results
    context = multiprocessing.get_context("spawn")  # no fork of a process running Spark's JVM
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_load_folds, initargs=(folds, inputs)
    ) as pool:
        futures = {
            pool.submit(_score_in_worker, grid[c].params, position): (c, position)
            for c, position in tasks
        }
        try:
            for future, task in futures.items():  # submission order: candidates in order
                collect(task, future.result())
        except BaseException:  # a failed task or Ctrl-C: do not train the rest first
            pool.shutdown(cancel_futures=True)
            raise
    return results


def choose(results: list[CandidateResult]) -> CandidateResult:
    """The best mean validation protocol AP; on a tie, the candidate listed first."""
    if not results:
        raise ValueError("no candidate to choose from")
    return max(results, key=lambda result: result.score)


def best_of_family(results: list[CandidateResult], family: str) -> CandidateResult | None:
    """The family's best candidate by the same rule, if the grid has one."""
    members = [result for result in results if result.candidate.params.family == family]
    return choose(members) if members else None
