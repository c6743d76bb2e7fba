"""The protocol's ceiling on simulated data: hidden frauds, the oracle's order, its figures."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from skewless.simulator import SimulationParams, SimulationResult, simulate
from training import protocol
from training.ceiling import (
    FRAUD_KINDS,
    GENUINE,
    HIDDEN_TERMINAL,
    VISIBLE_TERMINAL,
    fraud_kinds,
    hidden_frauds,
    latest_labelled,
    protocol_ceiling,
    protocol_test_sets,
    rank_losses,
    unseen_start_days,
)

DELAY = timedelta(days=7)
DAY0 = pd.Timestamp("2026-04-01", tz="UTC")


def _at(day: int, hour: float) -> pd.Timestamp:
    return DAY0 + pd.Timedelta(days=day, hours=hour)


def _hand_made() -> SimulationResult:
    """Terminal 1 compromised from day 10 for 28 days; terminal 2 never, one transaction."""
    rows = [  # (terminal, time, scenario)
        (1, _at(5, 12), 0),  # labelled genuine before the compromise
        (1, _at(10, 12), 2),  # the compromise's first transaction: nothing labelled of it
        (1, _at(16, 12), 2),  # its first transaction not labelled yet (until day 17, 12:00)
        (1, _at(17, 11), 2),  # one hour short of it
        (1, _at(17, 12), 2),  # exactly 7 days after: labelled, so revealed
        (1, _at(17, 13), 2),  # revealed
        (2, _at(20, 9), 0),
    ]
    frame = pd.DataFrame(
        {
            "transaction_id": np.arange(len(rows), dtype=np.int64),
            "tx_datetime": pd.DatetimeIndex([time for _, time, _ in rows]).as_unit("us"),
            "customer_id": np.arange(len(rows), dtype=np.int64),
            "terminal_id": np.array([terminal for terminal, _, _ in rows], dtype=np.int64),
            "tx_amount": np.full(len(rows), 10.0),
            "tx_fraud": np.array([code > 0 for _, _, code in rows], dtype=np.int8),
        }
    ).sort_values("tx_datetime", kind="stable")
    compromises = pd.DataFrame({"terminal_id": [1], "start": [_at(10, 0)], "end": [_at(38, 0)]})
    scenario = np.array([code for _, _, code in rows], dtype=np.int8)[frame.index]
    params = SimulationParams(start_date=date(2026, 4, 1), n_days=60)
    return SimulationResult(params, frame.reset_index(drop=True), scenario, compromises)


def test_a_compromise_is_hidden_until_one_of_its_transactions_is_labelled() -> None:
    result = _hand_made()
    latest = latest_labelled(result.transactions, DELAY)
    hidden = pd.Series(hidden_frauds(result, latest), index=result.transactions["tx_datetime"])
    assert hidden.to_dict() == {
        _at(5, 12): False,
        _at(10, 12): True,
        _at(16, 12): True,
        _at(17, 11): True,
        _at(17, 12): False,
        _at(17, 13): False,
        _at(20, 9): False,
    }


def test_unseen_start_days_count_back_to_the_latest_labelled_transaction() -> None:
    result = _hand_made()
    latest = latest_labelled(result.transactions, DELAY)
    unseen = unseen_start_days(result.transactions, latest, compromise_days=28)
    by_time = dict(zip(result.transactions["tx_datetime"], unseen.tolist(), strict=True))
    assert by_time[_at(5, 12)] == 28  # nothing labelled at the terminal: every day
    assert by_time[_at(16, 12)] == 11  # latest labelled on day 5: days 6 to 16
    assert by_time[_at(17, 12)] == 7  # latest labelled on day 10: days 11 to 17
    assert by_time[_at(20, 9)] == 28


def test_each_fraud_is_read_under_its_scenario_and_a_terminal_s_as_hidden_or_visible() -> None:
    result = _hand_made()
    hidden = hidden_frauds(result, latest_labelled(result.transactions, DELAY))
    kinds = fraud_kinds(result.scenario, hidden)
    assert kinds.tolist() == [
        GENUINE,
        HIDDEN_TERMINAL,
        HIDDEN_TERMINAL,
        HIDDEN_TERMINAL,
        VISIBLE_TERMINAL,
        VISIBLE_TERMINAL,
        GENUINE,
    ]
    codes = np.array([0, 1, 3], dtype=np.int8)
    assert fraud_kinds(codes, np.zeros(3, dtype=bool)).tolist() == [
        GENUINE,
        "amount_over_220",
        "compromised_customer",
    ]


def test_the_losses_by_kind_add_up_to_what_the_auc_misses() -> None:
    """By hand: 4 genuine scores, one fraud of each kind; then the sum on random scores."""
    frame = pd.DataFrame(
        {
            "tx_fraud": [0, 0, 0, 0, 1, 1, 1, 1],
            "score": [0.1, 0.2, 0.3, 0.4, 0.9, 0.3, 0.05, 0.25],
            "kind": [GENUINE] * 4 + list(FRAUD_KINDS),
        }
    )
    losses = rank_losses(frame)
    assert {kind: loss.mean_rank for kind, loss in losses.items()} == {
        FRAUD_KINDS[0]: 1.0,  # above all four
        FRAUD_KINDS[1]: 0.625,  # above two, tied with one
        FRAUD_KINDS[2]: 0.0,
        FRAUD_KINDS[3]: 0.5,
    }
    assert losses[FRAUD_KINDS[2]].auc_loss == 0.25  # (1 - 0) over 4 frauds
    total = sum(loss.auc_loss for loss in losses.values())
    assert 1 - total == pytest.approx(roc_auc_score(frame["tx_fraud"], frame["score"]))

    rng = np.random.default_rng(5)
    labels = rng.random(2000) < 0.1
    scores = np.round(rng.random(2000) + labels * 0.3, 2)  # ties on purpose
    kinds = np.where(labels, rng.choice(FRAUD_KINDS, 2000), GENUINE)
    random = pd.DataFrame({"tx_fraud": labels.astype(int), "score": scores, "kind": kinds})
    total = sum(loss.auc_loss for loss in rank_losses(random).values())
    assert 1 - total == pytest.approx(roc_auc_score(labels, scores))
    with pytest.raises(ValueError, match="both"):
        rank_losses(random[random["tx_fraud"] > 0])


def test_a_fraud_outside_every_compromise_is_refused() -> None:
    result = _hand_made()
    empty = result.terminal_compromises.iloc[:0]
    latest = latest_labelled(result.transactions, DELAY)
    with pytest.raises(ValueError, match="outside every compromise"):
        hidden_frauds(
            SimulationResult(result.params, result.transactions, result.scenario, empty), latest
        )


@pytest.fixture(scope="module")
def simulated() -> SimulationResult:
    return simulate(SimulationParams(n_customers=400, n_terminals=800, n_days=90, seed=3))


def test_hidden_frauds_match_a_transaction_by_transaction_reading(
    simulated: SimulationResult,
) -> None:
    frame = simulated.transactions
    hidden = hidden_frauds(simulated, latest_labelled(simulated.transactions, DELAY))
    by_terminal = {t: rows for t, rows in frame.groupby("terminal_id")["tx_datetime"]}
    compromises = simulated.terminal_compromises
    expected = np.zeros(len(frame), dtype=bool)
    rows = np.flatnonzero(simulated.scenario == 2)
    hits = frame.iloc[rows]
    for row, terminal, time in zip(rows, hits["terminal_id"], hits["tx_datetime"], strict=True):
        mine = compromises[compromises["terminal_id"] == terminal]
        start = mine.loc[(mine["start"] <= time) & (time < mine["end"]), "start"].min()
        times = by_terminal[terminal]
        expected[row] = not ((times >= start) & (times <= time - DELAY)).any()
    assert 50 < expected.sum() < (simulated.scenario == 2).sum()
    assert np.array_equal(hidden, expected)


def test_the_ceiling_ranks_every_visible_fraud_first(simulated: SimulationResult) -> None:
    times = simulated.transactions["tx_datetime"]
    latest = protocol.split(times.min().to_pydatetime(), times.max().to_pydatetime(), 7)
    folds = protocol.prequential_folds(latest, 2, times.min().to_pydatetime())
    ceilings = protocol_ceiling(folds, protocol_test_sets(simulated, folds, 7), orders=5)
    assert [c.test_start for c in ceilings] == [f.test_start for f in folds]
    for ceiling in ceilings:
        assert 0 < ceiling.hidden < ceiling.frauds_by_scenario["compromised_terminal"]
        # Visible frauds first and the hidden ones no worse than at random among the rest.
        at_random = 1 - ceiling.hidden / (2 * ceiling.frauds)
        assert at_random - 0.01 <= ceiling.figures["auc_roc"] < 1
        assert ceiling.figures["average_precision"] >= 1 - ceiling.hidden / ceiling.frauds - 0.01
        # At chance, the hidden frauds sit in the middle of the genuine transactions.
        assert ceiling.at_chance["auc_roc"] == pytest.approx(at_random, abs=0.02)
        assert ceiling.at_chance["auc_roc"] <= ceiling.figures["auc_roc"] + 0.005
        hidden = ceiling.losses[HIDDEN_TERMINAL]
        assert hidden.frauds == ceiling.hidden
        assert hidden.mean_rank >= 0.45
        assert ceiling.losses[VISIBLE_TERMINAL].mean_rank == 1.0
        total = sum(loss.auc_loss for loss in ceiling.losses.values())
        assert 1 - total == pytest.approx(ceiling.figures["auc_roc"])
