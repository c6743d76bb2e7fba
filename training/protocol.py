"""The time-based protocol: a training window, the label delay, then a test window.

Labels are known `delay_days` after a transaction, so a model trained on days
[train_start, train_start + train_days) can only be used from `delay_days` later: the test
window starts there. By default the windows are the latest complete ones of the data.

`prequential_folds` repeats a split further back in time, as the Fraud Detection Handbook's
`prequentialSplit` (chapter 5) does: fold k is fold 0 shifted back by k test windows.
`validation_folds` are the model-selection folds before them (the handbook's
`model_selection_wrapper`): hyperparameters are chosen there, never on the test folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

DAY = timedelta(days=1)
COMPLETE_DAY_FROM = time(23, 0)
"""The data's last day counts as complete when it has transactions at or after this time."""


@dataclass(frozen=True)
class TimeSplit:
    """Half-open UTC windows [start, end) of the protocol."""

    train_start: datetime
    train_end: datetime
    test_start: datetime
    test_end: datetime

    @property
    def delay(self) -> timedelta:
        return self.test_start - self.train_end

    def as_params(self) -> dict[str, str]:
        """The windows as ISO strings, for run parameters."""
        return {
            "train_start": self.train_start.isoformat(),
            "train_end": self.train_end.isoformat(),
            "test_start": self.test_start.isoformat(),
            "test_end": self.test_end.isoformat(),
        }


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def last_complete_day_end(data_end: datetime) -> datetime:
    """Exclusive end of the last complete day of data whose latest event is at `data_end`."""
    end = data_end.astimezone(UTC)
    day_end = _midnight(end.date()) + DAY
    return day_end if end.time() >= COMPLETE_DAY_FROM else day_end - DAY


def split(
    data_start: datetime,
    data_end: datetime,
    delay_days: int,
    train_start: date | None = None,
    train_days: int = 7,
    test_days: int = 7,
    history_days: int = 0,
) -> TimeSplit:
    """The protocol's windows within the data [data_start, data_end].

    `delay_days` is the label delay between the training and the test window: the one the
    feature declarations state (`skewless.aggregation.label_delay_days`) unless overridden.

    `history_days` is how much data must precede the training window for its features to be
    complete (the widest window plus the delay); a split that starts earlier is refused.
    """
    if min(train_days, test_days) <= 0 or delay_days < 0:
        raise ValueError("train and test windows need at least one day; the delay cannot be < 0")
    if train_start is None:
        test_end = last_complete_day_end(data_end)
        start = test_end - (train_days + delay_days + test_days) * DAY
    else:
        start = _midnight(train_start)
    result = TimeSplit(
        train_start=start,
        train_end=start + train_days * DAY,
        test_start=start + (train_days + delay_days) * DAY,
        test_end=start + (train_days + delay_days + test_days) * DAY,
    )
    _check_history(result, data_start, history_days)
    if result.test_end > last_complete_day_end(data_end):
        raise ValueError(
            f"the test window ends {result.test_end:%Y-%m-%d}, after the data's last complete "
            f"day ({last_complete_day_end(data_end) - DAY:%Y-%m-%d})"
        )
    return result


def _check_history(windows: TimeSplit, data_start: datetime, history_days: int) -> None:
    earliest = _midnight(data_start.astimezone(UTC).date()) + history_days * DAY
    if windows.train_start < earliest:
        raise ValueError(
            f"the training window starts {windows.train_start:%Y-%m-%d}, but features need "
            f"{history_days} days of history from {data_start:%Y-%m-%d}: start on or after "
            f"{earliest:%Y-%m-%d}"
        )


def prequential_folds(
    latest: TimeSplit, count: int, data_start: datetime, history_days: int = 0
) -> list[TimeSplit]:
    """`latest` and the `count - 1` splits before it, each shifted back by one test window.

    Fold 0 is `latest`; every fold keeps its lengths (train, delay, test). As in `split`, a
    fold whose training window starts before `history_days` of data is refused.
    """
    if count < 1:
        raise ValueError(f"need at least one fold, got {count}")
    shift = latest.test_end - latest.test_start
    result = [
        TimeSplit(
            train_start=latest.train_start - k * shift,
            train_end=latest.train_end - k * shift,
            test_start=latest.test_start - k * shift,
            test_end=latest.test_end - k * shift,
        )
        for k in range(count)
    ]
    _check_history(result[-1], data_start, history_days)
    return result


def validation_folds(
    test_folds: list[TimeSplit], data_start: datetime, history_days: int = 0
) -> list[TimeSplit]:
    """The model-selection folds of `test_folds`, as the handbook's chapter 5 places them.

    The same prequential split (as many folds, same lengths), moved back by the delay plus a
    test window from the oldest test fold (`start_date_training_for_valid`): the latest
    validation fold's test window ends where the oldest test fold's training window ends. So
    every label the selection scores on is known when the oldest test window starts, and no
    validation window, training or test, touches a test fold's test window. The oldest
    validation fold must have the features' history (`history_days`).
    """
    if not test_folds:
        raise ValueError("need the test folds to place the validation folds before")
    oldest = min(test_folds, key=lambda fold: fold.train_start)
    shift = oldest.delay + (oldest.test_end - oldest.test_start)
    latest = TimeSplit(
        train_start=oldest.train_start - shift,
        train_end=oldest.train_end - shift,
        test_start=oldest.test_start - shift,
        test_end=oldest.test_end - shift,
    )
    return prequential_folds(latest, len(test_folds), data_start, history_days)
