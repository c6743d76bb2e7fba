"""Unit tests for the test-set metrics, on frames small enough to check by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skewless.fraud_metrics import (
    auc_roc,
    average_precision,
    card_precision_at_k,
    card_precision_per_day,
)
from training.evaluate import METRIC_KEYS, evaluate, plot_precision_recall, plot_roc

A, B, C, D, E = 1, 2, 3, 4, 5


def _transactions(rows: list[tuple[str, int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tx_datetime": pd.to_datetime([row[0] for row in rows], utc=True),
            "customer_id": np.array([row[1] for row in rows], dtype=np.int64),
            "score": [row[2] for row in rows],
            "tx_fraud": np.array([row[3] for row in rows], dtype=np.int8),
        }
    )


@pytest.fixture
def three_days() -> pd.DataFrame:
    """Hand-made test set, k = 2. Worked answer, day by day:

    Day 1 (2026-05-01). Per card (max score, any fraud): A (0.9, yes: its fraud is a low-scored
    transaction), B (0.8, no), C (0.3, yes), D (0.1, no). Top 2 = A, B -> 1 hit -> 1/2.
    Detected so far: {A}. C was compromised but not detected, so it stays in play.
    Day 2. A (0.95, no) is removed as detected. B (0.7, yes), C (0.68, yes), D (0.65, no).
    Top 2 = B, C -> 2/2 = 1.0. Detected: {A, B, C}. (Without removal the top 2 would be A, B
    -> 1/2; removing every card with an earlier fraud would drop C and give B, D -> 1/2.)
    Day 3. C (0.99, yes) is removed; only E (0.4, yes) is left, one card for k = 2 -> 1/2.
    Mean = (0.5 + 1.0 + 0.5) / 3 = 2/3.
    """
    return _transactions(
        [
            ("2026-05-01T08:00:00Z", A, 0.9, 0),
            ("2026-05-01T23:59:59Z", A, 0.2, 1),
            ("2026-05-01T09:00:00Z", B, 0.8, 0),
            ("2026-05-01T10:00:00Z", C, 0.3, 1),
            ("2026-05-01T11:00:00Z", D, 0.1, 0),
            ("2026-05-02T00:00:00Z", A, 0.95, 0),
            ("2026-05-02T12:00:00Z", B, 0.7, 1),
            ("2026-05-02T12:30:00Z", B, 0.1, 0),
            ("2026-05-02T13:00:00Z", C, 0.68, 1),
            ("2026-05-02T14:00:00Z", D, 0.65, 0),
            ("2026-05-03T09:00:00Z", C, 0.99, 1),
            ("2026-05-03T10:00:00Z", E, 0.4, 1),
        ]
    )


def test_card_precision_per_day_matches_the_hand_computed_answer(
    three_days: pd.DataFrame,
) -> None:
    per_day = card_precision_per_day(three_days, k=2)
    days = [pd.Timestamp(f"2026-05-0{day}", tz="UTC") for day in (1, 2, 3)]
    assert list(per_day.index) == days
    assert per_day.tolist() == [0.5, 1.0, 0.5]
    assert card_precision_at_k(three_days, k=2) == pytest.approx(2 / 3)


def test_card_precision_ignores_row_order(three_days: pd.DataFrame) -> None:
    shuffled = three_days.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert card_precision_at_k(shuffled, k=2) == pytest.approx(2 / 3)


def test_card_precision_uses_utc_calendar_days() -> None:
    # Times given in New York: C at 23:30 on May 1st local is 03:30 UTC on May 2nd, the UTC day
    # of A and B. One UTC day ranks A, C, B -> top 2 = A (no), C (yes) -> [0.5]; local days
    # would give two days instead.
    frame = _transactions(
        [
            ("2026-05-02T05:00:00Z", A, 0.9, 0),
            ("2026-05-02T06:00:00Z", B, 0.5, 1),
            ("2026-05-02T03:30:00Z", C, 0.7, 1),
        ]
    )
    frame["tx_datetime"] = frame["tx_datetime"].dt.tz_convert("America/New_York")
    per_day = card_precision_per_day(frame, k=2)
    assert per_day.tolist() == [0.5]
    assert per_day.index[0] == pd.Timestamp("2026-05-02", tz="UTC")


def test_card_precision_rejects_bad_input(three_days: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="k must be"):
        card_precision_at_k(three_days, k=0)
    with pytest.raises(ValueError, match="columns"):
        card_precision_at_k(three_days.drop(columns="score"))


def test_auc_and_average_precision_on_a_worked_example() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # Pairs (positive, negative) ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4) = 3 of 4.
    assert auc_roc(labels, scores) == pytest.approx(0.75)
    # Ranked: 0.8 (+) precision 1, 0.4 (-), 0.35 (+) precision 2/3 -> AP = (1 + 2/3) / 2.
    assert average_precision(labels, scores) == pytest.approx(5 / 6)


def test_evaluate_returns_exactly_the_logged_keys(three_days: pd.DataFrame) -> None:
    metrics = evaluate(three_days, np.zeros(len(three_days), dtype=bool))
    assert tuple(metrics) == METRIC_KEYS
    assert set(metrics) == {
        f"test_{scope}_{name}"
        for scope in ("protocol", "all")
        for name in ("auc_roc", "average_precision", "card_precision_at_100")
    }
    assert metrics["test_all_auc_roc"] == pytest.approx(
        auc_roc(three_days["tx_fraud"], three_days["score"])
    )
    # k = 100 exceeds the cards of any day, so every compromised card is detected on its day:
    # day 1 finds A and C, day 2 finds B (A, C removed), day 3 finds E -> (2 + 1 + 1) / 3 / 100.
    assert metrics["test_all_card_precision_at_100"] == pytest.approx(4 / 300)
    # Nothing known compromised: the protocol's figures are the whole window's.
    for name in ("auc_roc", "average_precision", "card_precision_at_100"):
        assert metrics[f"test_protocol_{name}"] == metrics[f"test_all_{name}"]


def test_protocol_figures_leave_out_the_known_compromised_rows(three_days: pd.DataFrame) -> None:
    # Card C known compromised on days 2 and 3 (as if its day-1 fraud had been labelled).
    known = (three_days["customer_id"] == C) & (three_days["tx_datetime"] >= "2026-05-02")
    metrics = evaluate(three_days, known.to_numpy())
    kept = three_days[~known]
    assert metrics["test_protocol_auc_roc"] == pytest.approx(
        auc_roc(kept["tx_fraud"], kept["score"])
    )
    assert metrics["test_protocol_average_precision"] == pytest.approx(
        average_precision(kept["tx_fraud"], kept["score"])
    )
    # Day 1 finds A and C, day 2 only B, day 3 only E (C is gone) -> (2 + 1 + 1) / 300.
    assert metrics["test_protocol_card_precision_at_100"] == pytest.approx(4 / 300)
    assert metrics["test_protocol_auc_roc"] != metrics["test_all_auc_roc"]
    with pytest.raises(ValueError, match="one known-compromised flag per row"):
        evaluate(three_days, known.to_numpy()[1:])


def test_plots_write_png_files(tmp_path: Path) -> None:
    labels = np.array([0, 1, 0, 1, 0, 0])
    scores = np.array([0.1, 0.9, 0.3, 0.6, 0.7, 0.2])
    roc = plot_roc(labels, scores, tmp_path / "plots" / "roc.png")
    pr = plot_precision_recall(labels, scores, tmp_path / "plots" / "pr.png")
    for path in (roc, pr):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000
