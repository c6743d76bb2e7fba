"""Unit tests for the vectorised transaction simulator."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pytest

from skewless.simulator import (
    SCENARIOS,
    SimulationParams,
    SimulationResult,
    generate_profiles,
    simulate,
)

SMALL = SimulationParams(
    n_customers=200, n_terminals=500, n_days=30, start_date=date(2026, 4, 1), seed=7
)
EXPECTED_DTYPES = {
    "transaction_id": "int64",
    "tx_datetime": "datetime64[us, UTC]",
    "customer_id": "int64",
    "terminal_id": "int64",
    "tx_amount": "float64",
    "tx_fraud": "int8",
}


@pytest.fixture(scope="module")
def small() -> SimulationResult:
    return simulate(SMALL)


def test_schema_and_dtypes_are_canonical(small: SimulationResult) -> None:
    frame = small.transactions
    assert list(frame.columns) == list(EXPECTED_DTYPES)
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == EXPECTED_DTYPES
    assert len(frame) > 5000
    assert set(frame["tx_fraud"].unique()) == {0, 1}
    assert (frame["tx_amount"] >= 0).all()
    assert np.allclose(frame["tx_amount"], frame["tx_amount"].round(2), rtol=0, atol=1e-9)


def test_transaction_ids_are_unique_and_follow_time_order(small: SimulationResult) -> None:
    frame = small.transactions
    assert frame["transaction_id"].is_unique
    assert np.array_equal(frame["transaction_id"].to_numpy(), np.arange(len(frame)))
    assert frame["tx_datetime"].is_monotonic_increasing


def test_timestamps_lie_within_the_simulated_days(small: SimulationResult) -> None:
    stamps = small.transactions["tx_datetime"]
    start = pd.Timestamp(SMALL.start_date, tz="UTC")
    assert stamps.min() >= start
    assert stamps.max() < start + pd.Timedelta(days=SMALL.n_days)
    assert stamps.dt.normalize().nunique() == SMALL.n_days


def test_time_of_day_concentrates_in_daytime(small: SimulationResult) -> None:
    hours = small.transactions["tx_datetime"].dt.hour
    # normal(12 h, 5 h): about 77% between 06:00 and 18:00; a uniform day would give 50%.
    assert 0.70 < hours.between(6, 17).mean() < 0.85


def test_same_seed_is_deterministic_and_another_seed_differs(small: SimulationResult) -> None:
    again = simulate(SMALL)
    pd.testing.assert_frame_equal(again.transactions, small.transactions)
    assert again.fraud_by_scenario == small.fraud_by_scenario
    other = simulate(replace(SMALL, seed=8)).transactions
    assert not other.equals(small.transactions)
    assert not np.array_equal(
        other["tx_amount"].to_numpy()[:100], small.transactions["tx_amount"].to_numpy()[:100]
    )


def test_every_amount_over_220_is_fraud(small: SimulationResult) -> None:
    frame = small.transactions
    over = frame["tx_amount"] > 220
    assert over.sum() > 0
    assert (frame.loc[over, "tx_fraud"] == 1).all()


def test_scenario_counts_add_up_to_the_labels(small: SimulationResult) -> None:
    assert list(small.fraud_by_scenario) == list(SCENARIOS)
    assert sum(small.fraud_by_scenario.values()) == small.transactions["tx_fraud"].sum()
    assert all(count > 0 for count in small.fraud_by_scenario.values())
    assert small.fraud_rate == pytest.approx(small.transactions["tx_fraud"].mean())


def test_without_compromises_only_large_amounts_are_fraud() -> None:
    params = replace(SMALL, compromised_terminals_per_day=0, compromised_customers_per_day=0)
    result = simulate(params)
    frame = result.transactions
    assert np.array_equal(frame["tx_fraud"].to_numpy(), (frame["tx_amount"] > 220).to_numpy())
    assert result.fraud_by_scenario["compromised_terminal"] == 0
    assert result.fraud_by_scenario["compromised_customer"] == 0


def test_compromised_customers_get_inflated_amounts() -> None:
    params = replace(SMALL, compromised_terminals_per_day=0, fraud_amount_threshold=1e9)
    result = simulate(params)
    frame = result.transactions
    frauds = frame[frame["tx_fraud"] == 1]
    assert len(frauds) == result.fraud_by_scenario["compromised_customer"] > 0
    # amount in cents x 5: every inflated amount is a whole multiple of 5 cents
    assert (np.round(frauds["tx_amount"].to_numpy() * 100).astype(np.int64) % 5 == 0).all()
    victims = frame[frame["customer_id"].isin(frauds["customer_id"])]
    genuine_mean = victims.loc[victims["tx_fraud"] == 0, "tx_amount"].mean()
    assert 3.5 < frauds["tx_amount"].mean() / genuine_mean < 7
    fraud_share = victims["tx_fraud"].mean()
    assert 0.05 < fraud_share < 1 / 3


def test_compromised_terminals_produce_long_all_fraud_stretches(small: SimulationResult) -> None:
    frame = small.transactions.sort_values(["terminal_id", "transaction_id"])
    genuine_so_far = (frame["tx_fraud"] == 0).groupby(frame["terminal_id"]).cumsum()
    frauds = frame["tx_fraud"] == 1
    runs = frame[frauds].groupby([frame.loc[frauds, "terminal_id"], genuine_so_far[frauds]])
    run_lengths = runs.size()
    # A compromised terminal sees ~0.8 transactions a day for 28 days, all fraud.
    assert (run_lengths >= 10).sum() >= 10
    spans = runs["tx_datetime"].agg(lambda s: s.max() - s.min())
    assert spans.max() >= pd.Timedelta(days=14)


def test_customers_only_use_terminals_within_the_radius(small: SimulationResult) -> None:
    profiles = generate_profiles(SMALL)
    frame = small.transactions
    customer_xy = profiles.customer_xy[frame["customer_id"].to_numpy()]
    terminal_xy = profiles.terminal_xy[frame["terminal_id"].to_numpy()]
    distances = np.linalg.norm(customer_xy - terminal_xy, axis=1)
    assert distances.max() <= SMALL.radius


def test_neighbour_index_matches_brute_force_and_isolated_customers_are_idle(
    small: SimulationResult,
) -> None:
    profiles = generate_profiles(SMALL)
    dense = np.linalg.norm(
        profiles.customer_xy[:, None, :] - profiles.terminal_xy[None, :, :], axis=2
    )
    for customer in range(SMALL.n_customers):
        expected = np.flatnonzero(dense[customer] <= SMALL.radius)
        assert np.array_equal(profiles.terminals_of(customer), expected)
    isolated = np.flatnonzero((dense > SMALL.radius).all(axis=1))
    assert isolated.size > 0  # 500 terminals: a few customers have none in reach
    assert not small.transactions["customer_id"].isin(isolated).any()


def test_profiles_follow_the_documented_distributions() -> None:
    profiles = generate_profiles(replace(SMALL, n_customers=2000))
    assert profiles.customer_xy.min() >= 0 and profiles.customer_xy.max() <= 100
    assert profiles.mean_amount.min() >= 5 and profiles.mean_amount.max() <= 100
    assert np.allclose(profiles.std_amount, profiles.mean_amount / 2)
    assert profiles.mean_nb_tx_per_day.min() >= 0 and profiles.mean_nb_tx_per_day.max() <= 4
    assert profiles.mean_nb_tx_per_day.mean() == pytest.approx(2.0, abs=0.15)


def test_fraud_rate_is_plausible_for_a_mid_size_run() -> None:
    # Default population over 60 days (~600k rows): the ramp-up of the 28- and 14-day compromise
    # windows keeps the rate a little below the ~0.85% of the full 183-day run.
    result = simulate(SimulationParams(n_days=60, seed=3))
    assert 400_000 < len(result.transactions) < 800_000
    assert 0.0055 < result.fraud_rate < 0.012
    counts = result.fraud_by_scenario
    assert (
        counts["compromised_terminal"] > counts["compromised_customer"] > counts["amount_over_220"]
    )


@pytest.mark.parametrize(
    "overrides",
    [{"n_days": 0}, {"radius": 0.0}, {"compromised_terminals_per_day": 501}],
)
def test_invalid_params_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(SMALL, **overrides)


def test_each_row_carries_the_scenario_it_counts_under(small: SimulationResult) -> None:
    frame = small.transactions
    assert small.scenario.shape == (len(frame),)
    assert np.array_equal(small.scenario > 0, frame["tx_fraud"].to_numpy() == 1)
    assert (frame["tx_amount"].to_numpy()[small.scenario == 1] > 220).all()
    codes = np.bincount(small.scenario, minlength=len(SCENARIOS) + 1)[1:]
    assert list(small.fraud_by_scenario.values()) == codes.tolist()


def test_the_compromises_are_the_terminal_frauds(small: SimulationResult) -> None:
    """Every transaction inside a compromise of its terminal is a fraud, counted under that
    scenario unless its amount made it one first; no compromised-terminal fraud lies outside."""
    compromises = small.terminal_compromises
    per_day = SMALL.compromised_terminals_per_day
    assert len(compromises) == SMALL.n_days * per_day
    assert (compromises["end"] - compromises["start"] <= pd.Timedelta(days=28)).all()
    assert compromises["start"].dt.floor("D").eq(compromises["start"]).all()
    frame = small.transactions.assign(scenario=small.scenario)
    pairs = frame.reset_index().merge(compromises, on="terminal_id")
    inside = pairs[(pairs["start"] <= pairs["tx_datetime"]) & (pairs["tx_datetime"] < pairs["end"])]
    rows = np.unique(inside["index"].to_numpy())
    assert len(rows) > 100
    assert (frame["tx_fraud"].to_numpy()[rows] == 1).all()
    assert set(frame["scenario"].to_numpy()[rows]) <= {1, 2}
    assert set(np.flatnonzero(small.scenario == 2)) <= set(rows)


def test_the_result_carries_its_parameters(small: SimulationResult) -> None:
    assert small.params == SMALL
