"""The handbook's test set: cards already known compromised leave it, day by day."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from skewless.known_frauds import first_fraud_days, known_compromised
from skewless.simulator import SimulationParams, simulate

DELAY = 7
TRAIN_START = pd.Timestamp("2026-05-01", tz="UTC")  # training 05-01..05-07
TEST_START = TRAIN_START + pd.Timedelta(days=14)  # delay 05-08..05-14, test 05-15..05-21
TEST_DAYS = [TEST_START + pd.Timedelta(days=d) for d in range(7)]

IN_TRAINING, IN_DELAY, LAST_DELAY_DAY, ON_TEST_DAY, NEVER, LATE_EVENING = 1, 2, 3, 4, 5, 6


def _labelled() -> pd.DataFrame:
    """Every card has a genuine transaction at noon on every day, plus its frauds."""
    frauds = [
        (IN_TRAINING, "2026-05-03T10:00:00Z"),
        (IN_DELAY, "2026-05-10T09:00:00Z"),  # day X = 05-10: known from 05-18 on
        (IN_DELAY, "2026-05-16T09:00:00Z"),  # a later fraud changes nothing
        (LAST_DELAY_DAY, "2026-05-14T00:00:00Z"),  # known from 05-22: after the test
        (ON_TEST_DAY, "2026-05-15T08:00:00Z"),  # known from 05-23: after the test
        (LATE_EVENING, "2026-05-13T23:59:59Z"),  # UTC day 05-13: known on 05-21 only
    ]
    days = pd.date_range(TRAIN_START, TEST_DAYS[-1], freq="D") + pd.Timedelta(hours=12)
    genuine = [(card, day, 0) for card in range(1, 7) for day in days]
    rows = genuine + [(card, pd.Timestamp(time), 1) for card, time in frauds]
    return pd.DataFrame(rows, columns=["customer_id", "tx_datetime", "tx_fraud"]).assign(
        tx_datetime=lambda frame: pd.to_datetime(frame["tx_datetime"], utc=True)
    )


def _test_cards_per_day() -> dict[pd.Timestamp, set[int]]:
    labelled = _labelled()
    test = labelled[labelled["tx_datetime"] >= TEST_START].reset_index(drop=True)
    known = known_compromised(test, first_fraud_days(labelled), DELAY)
    kept = test[~known]
    return {
        day: set(kept.loc[kept["tx_datetime"].dt.floor("D") == day, "customer_id"])
        for day in TEST_DAYS
    }


def test_a_card_with_a_fraud_in_training_is_absent_from_the_test_set() -> None:
    for day, cards in _test_cards_per_day().items():
        assert IN_TRAINING not in cards, day
        assert NEVER in cards, day


def test_a_first_fraud_on_day_x_removes_the_card_from_day_x_plus_8_on() -> None:
    cards = _test_cards_per_day()
    for card, first_fraud in (
        (IN_DELAY, "2026-05-10"),
        (LATE_EVENING, "2026-05-13"),
        (LAST_DELAY_DAY, "2026-05-14"),
        (ON_TEST_DAY, "2026-05-15"),
    ):
        known_from = pd.Timestamp(first_fraud, tz="UTC") + pd.Timedelta(days=DELAY + 1)
        for day in TEST_DAYS:
            assert (card in cards[day]) == (day < known_from), (card, day)
    # The cases above do reach both sides of the rule:
    assert IN_DELAY in cards[TEST_DAYS[2]] and IN_DELAY not in cards[TEST_DAYS[3]]
    assert LATE_EVENING in cards[TEST_DAYS[5]] and LATE_EVENING not in cards[TEST_DAYS[6]]


def test_the_rule_needs_the_columns_and_a_delay() -> None:
    with pytest.raises(ValueError, match="tx_fraud"):
        first_fraud_days(_labelled().drop(columns="tx_fraud"))
    with pytest.raises(ValueError, match="negative"):
        known_compromised(_labelled(), first_fraud_days(_labelled()), -1)


def _handbook_test_set(
    transactions: pd.DataFrame, train_start: pd.Timestamp, train_days: int, test_days: int
) -> set[int]:
    """The handbook's `get_train_test_set` walk, restated: start from the cards with a fraud
    in training; before test day `d` (0-based) add the frauds of day
    `train_start + train_days + d - 1`; keep the test day's transactions of other cards."""
    day_of = transactions["tx_datetime"].dt.floor("D")
    frauds = transactions["tx_fraud"] == 1

    def fraud_cards(first: pd.Timestamp, last: pd.Timestamp) -> set[int]:
        return set(transactions.loc[frauds & day_of.between(first, last), "customer_id"])

    train_end = train_start + pd.Timedelta(days=train_days)
    known = fraud_cards(train_start, train_end - pd.Timedelta(days=1))
    kept: set[int] = set()
    for d in range(test_days):
        newly = train_start + pd.Timedelta(days=train_days + d - 1)
        known |= fraud_cards(newly, newly)
        today = day_of == train_end + pd.Timedelta(days=DELAY + d)
        kept |= set(
            transactions.loc[today & ~transactions["customer_id"].isin(known), "transaction_id"]
        )
    return kept


@pytest.mark.parametrize("test_days", [7, 10])
def test_matches_the_handbook_walk_on_simulated_data(test_days: int) -> None:
    params = SimulationParams(
        n_customers=300, n_terminals=600, n_days=60, start_date=date(2026, 4, 1)
    )
    transactions = simulate(params).transactions
    train_start = pd.Timestamp(date(2026, 4, 1) + timedelta(days=30), tz="UTC")
    test_start = train_start + pd.Timedelta(days=7 + DELAY)
    test_end = test_start + pd.Timedelta(days=test_days)
    window = transactions[
        (transactions["tx_datetime"] >= train_start) & (transactions["tx_datetime"] < test_end)
    ]
    test = window[window["tx_datetime"] >= test_start].reset_index(drop=True)
    known = known_compromised(test, first_fraud_days(window), DELAY)
    expected = _handbook_test_set(transactions, train_start, 7, test_days)
    assert set(test.loc[~known, "transaction_id"]) == expected
    assert 0 < int(known.sum()) < len(test)  # the comparison is not vacuous
    assert np.isin(
        test.loc[known, "customer_id"], window.loc[window["tx_fraud"] == 1, "customer_id"]
    ).all()
