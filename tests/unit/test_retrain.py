"""The retrain command's durations and its schedule loop."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from itertools import pairwise

import pytest

from training.retrain import RetrainOutcome, parse_duration, run_every


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
