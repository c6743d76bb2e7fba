"""The retrain command's durations, its schedule loop, and the champion's settings it trains
with (read back from what its run logged)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from itertools import pairwise

import pytest

from training.model import TrainingParams
from training.retrain import RetrainOutcome, parse_duration, run_every
from training.tracking import logged_params, model_params

FEEDFORWARD = TrainingParams(
    hidden_sizes=(128, 64), dropout=0.2, learning_rate=3e-3, imbalance="pos_weight", seed=7
)
SEQUENCE = TrainingParams(hidden_sizes=(64,), history_units=32, max_epochs=30, batch_size=512)
LOGISTIC = TrainingParams(hidden_sizes=(), learning_rate=1e-2, max_positive_weight=20.0)
TREES = TrainingParams(hidden_sizes=(), trees=150, tree_depth=4, tree_l2=2.5, learning_rate=0.05)


@pytest.mark.parametrize(
    "params",
    [
        FEEDFORWARD,
        SEQUENCE,
        LOGISTIC,
        TREES,
        TrainingParams(members=(FEEDFORWARD, SEQUENCE, LOGISTIC, TREES)),
    ],
    ids=["feedforward", "sequence", "logistic_regression", "boosted_trees", "ensemble"],
)
def test_the_logged_settings_read_back_to_the_same_params(params: TrainingParams) -> None:
    # As MLflow keeps them: strings, next to the run's other parameters.
    logged = model_params(params) | {"folds": "4", "window_train_start": "2026-05-31"}
    assert logged_params(logged) == params


def test_settings_a_run_did_not_log_keep_their_defaults() -> None:
    assert logged_params({"family": "feedforward", "dropout": "0.1"}) == TrainingParams(dropout=0.1)


@pytest.mark.parametrize(
    ("key", "value"), [("hidden_sizes", "(64, 'x')"), ("dropout", "high"), ("seed", "1.5")]
)
def test_an_unreadable_logged_setting_is_named(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"logged parameter {key}="):
        logged_params({"family": "feedforward", key: value})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("1d", 86_400), ("2.5", 2.5), (" 1H ", 3600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0s", "1w", "h", "10 minutes", "-5m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_schedule_runs_on_its_period_survives_a_failure_and_stops_at_max_runs() -> None:
    starts: list[float] = []

    def run() -> RetrainOutcome:
        starts.append(time.monotonic())
        if len(starts) == 2:
            raise RuntimeError("registry down")
        return RetrainOutcome(True, "retrained", 0.0)

    seen: list[str] = []
    outcomes = run_every(
        run,
        timedelta(seconds=0.2),
        threading.Event(),
        max_runs=3,
        on_outcome=lambda o: seen.append(o.line),
    )
    assert [outcome.retrained for outcome in outcomes] == [True, False, True]
    assert seen == ["retrained", "failed: registry down", "retrained"]
    gaps = [later - earlier for earlier, later in pairwise(starts)]
    assert all(gap >= 0.19 for gap in gaps), gaps


def test_schedule_stops_during_a_wait_when_asked() -> None:
    stop = threading.Event()

    def run() -> RetrainOutcome:
        threading.Timer(0.1, stop.set).start()
        return RetrainOutcome(False, "nothing to do", 0.0)

    started = time.monotonic()
    outcomes = run_every(run, timedelta(hours=1), stop)
    assert len(outcomes) == 1
    assert time.monotonic() - started < 30  # not the hour of the period
