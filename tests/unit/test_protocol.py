"""The time-based protocol: train, delay, test; defaults pick the latest complete windows."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from training.protocol import last_complete_day_end, prequential_folds, split, validation_folds

DELAY_DAYS = 7

START = datetime(2026, 4, 1, 0, 3, tzinfo=UTC)
END = datetime(2026, 9, 30, 23, 58, tzinfo=UTC)


def test_defaults_take_the_latest_complete_windows() -> None:
    windows = split(START, END, DELAY_DAYS)
    assert windows.test_end == datetime(2026, 10, 1, tzinfo=UTC)
    assert windows.test_start == datetime(2026, 9, 24, tzinfo=UTC)
    assert windows.train_end == datetime(2026, 9, 17, tzinfo=UTC)
    assert windows.train_start == datetime(2026, 9, 10, tzinfo=UTC)
    assert windows.delay.days == 7


def test_partial_last_day_is_left_out() -> None:
    assert last_complete_day_end(datetime(2026, 9, 30, 14, 0, tzinfo=UTC)) == datetime(
        2026, 9, 30, tzinfo=UTC
    )


def test_explicit_start_and_lengths() -> None:
    windows = split(START, END, delay_days=3, train_start=date(2026, 6, 1), train_days=14)
    assert windows.train_start == datetime(2026, 6, 1, tzinfo=UTC)
    assert windows.train_end == datetime(2026, 6, 15, tzinfo=UTC)
    assert windows.test_start == datetime(2026, 6, 18, tzinfo=UTC)
    assert windows.test_end == datetime(2026, 6, 25, tzinfo=UTC)


def test_refuses_windows_without_feature_history_or_past_the_data() -> None:
    with pytest.raises(ValueError, match="history"):
        split(START, END, DELAY_DAYS, train_start=date(2026, 4, 10), history_days=37)
    with pytest.raises(ValueError, match="after the data"):
        split(START, END, DELAY_DAYS, train_start=date(2026, 9, 20))


def test_prequential_folds_shift_back_one_test_window_each() -> None:
    latest = split(START, END, DELAY_DAYS)
    folds = prequential_folds(latest, 4, START, history_days=37)
    assert folds[0] == latest
    assert [fold.test_start for fold in folds] == [
        datetime(2026, 9, 24, tzinfo=UTC),
        datetime(2026, 9, 17, tzinfo=UTC),
        datetime(2026, 9, 10, tzinfo=UTC),
        datetime(2026, 9, 3, tzinfo=UTC),
    ]
    assert folds[3].train_start == datetime(2026, 8, 20, tzinfo=UTC)
    assert {(f.train_end - f.train_start, f.delay, f.test_end - f.test_start) for f in folds} == {
        (latest.train_end - latest.train_start, latest.delay, latest.test_end - latest.test_start)
    }


def test_prequential_folds_need_history_for_the_oldest() -> None:
    latest = split(START, END, DELAY_DAYS, train_start=date(2026, 5, 20))
    assert len(prequential_folds(latest, 2, START, history_days=37)) == 2
    with pytest.raises(ValueError, match="history"):
        prequential_folds(latest, 3, START, history_days=37)
    with pytest.raises(ValueError, match="at least one fold"):
        prequential_folds(latest, 0, START)


def test_validation_folds_end_where_the_oldest_test_fold_trains() -> None:
    """The handbook's chapter 5 placement: validation fold 0 is the oldest test fold moved back
    by the delay and a test window, so its test week is that fold's training week."""
    tests = prequential_folds(split(START, END, DELAY_DAYS), 4, START, history_days=37)
    validation = validation_folds(tests, START, history_days=37)
    assert len(validation) == 4
    assert validation[0].train_start == datetime(2026, 8, 6, tzinfo=UTC)
    assert validation[0].test_start == tests[3].train_start == datetime(2026, 8, 20, tzinfo=UTC)
    assert validation[0].test_end == tests[3].train_end
    assert validation[3].train_start == datetime(2026, 7, 16, tzinfo=UTC)
    # Every label scored by the selection is known before the first test window starts.
    assert max(v.test_end for v in validation) + tests[3].delay <= min(t.test_start for t in tests)
    for v in validation:
        assert (v.train_end - v.train_start, v.delay) == (
            tests[0].train_end - tests[0].train_start,
            tests[0].delay,
        )
        for t in tests:
            assert v.test_end <= t.test_start and v.train_end <= t.test_start


def test_validation_folds_need_history_for_the_oldest() -> None:
    latest = split(START, END, DELAY_DAYS, train_start=date(2026, 6, 10))
    assert len(validation_folds([latest], START, history_days=37)) == 1
    with pytest.raises(ValueError, match="history"):
        validation_folds(prequential_folds(latest, 3, START), START, history_days=37)
    with pytest.raises(ValueError, match="test folds"):
        validation_folds([], START)
