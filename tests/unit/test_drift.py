"""Drift figures (PSI, JS distance, binned KS), per-feature statuses and the rolling window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import (
    DriftThresholds,
    drift_report,
    js_distance,
    ks_statistic_binned,
    ks_statistic_exact,
)
from skewless.psi import RollingDrift, psi, served_bin_counts
from skewless.statistics import feature_statistics, reference_statistics

N = 100_000


def simulator_like_amounts(n: int, rng: np.random.Generator) -> np.ndarray:
    """Amounts drawn as the simulator draws them: per-customer normal, negatives redrawn."""
    mean = rng.uniform(5, 100, n)
    amounts = rng.normal(mean, mean / 2)
    negative = amounts < 0
    amounts[negative] = rng.uniform(0, 2 * mean[negative])
    return np.round(amounts, 2)


def test_psi_is_zero_for_identical_shares_and_grows_with_the_shift() -> None:
    shares = np.full(10, 0.1)
    assert psi(shares, shares * 1000) == pytest.approx(0.0, abs=1e-12)
    small = psi(shares, [120, 80] + [100] * 8)
    large = psi(shares, [200, 0] + [100] * 8)
    assert 0 < small < large
    assert np.isnan(psi(shares, np.zeros(10)))


def test_js_distance_is_bounded_by_zero_and_one() -> None:
    assert js_distance([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0, abs=1e-7)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert 0 < js_distance([5, 5], [6, 4]) < js_distance([5, 5], [9, 1]) < 1


def test_psi_separates_a_scaled_amount_distribution() -> None:
    """Unscaled amounts stay far below the warn level; 1.5x amounts are a large drift.

    With the ten training-quantile bins of the reference, a 1.5x scale of the simulator's
    amount mixture gives a PSI of about 0.24 (just under the 0.25 alert level; JS distance
    about 0.2), so the feature alerts through JS and KS rather than PSI alone.
    """
    rng = np.random.default_rng(7)
    reference = feature_statistics("tx_amount", simulator_like_amounts(N, rng))
    same = simulator_like_amounts(N, rng)
    scaled = 1.5 * simulator_like_amounts(N, rng)
    edges = np.asarray(reference.inner_edges)
    assert psi(reference.histogram, served_bin_counts(edges, same)[0]) < 0.01
    shifted = psi(reference.histogram, served_bin_counts(edges, scaled)[0])
    assert shifted > 0.2
    report = drift_report({"tx_amount": reference}, pd.DataFrame({"tx_amount": scaled}))
    assert report[0].status == "alert"
    assert report[0].js > DriftThresholds().js_alert


def test_binned_ks_is_small_for_the_same_distribution_and_bounded_by_the_exact_one() -> None:
    rng = np.random.default_rng(1)
    training = rng.normal(0, 1, N)
    reference = feature_statistics("x", training)
    same, shifted = rng.normal(0, 1, N), rng.normal(0.5, 1, N)
    assert ks_statistic_binned(reference, same) < 0.01
    binned = ks_statistic_binned(reference, shifted)
    exact = ks_statistic_exact(training, shifted)
    assert 0.15 < binned <= exact + 1e-9
    assert exact == pytest.approx(0.197, abs=0.01)
    assert np.isnan(ks_statistic_binned(reference, np.full(5, np.nan)))


def test_served_bin_counts_match_the_reference_bins_with_nulls_out() -> None:
    rng = np.random.default_rng(2)
    for bins in (10, 100):  # the comparison path and the searchsorted path
        stats = feature_statistics("x", rng.normal(size=5_000), bins)
        values = rng.normal(size=2_000)
        values[::9] = np.nan
        values[1:6] = [np.inf, -np.inf, *stats.inner_edges[:3]]
        counts, nulls = served_bin_counts(np.asarray(stats.inner_edges), values)
        assert nulls == int(np.isnan(values).sum())
        assert np.array_equal(counts, stats.bin_counts(values))


def test_drift_report_statuses() -> None:
    rng = np.random.default_rng(3)
    training = pd.DataFrame({name: rng.normal(0, 1, N) for name in ("a", "b", "c", "d", "score")})
    reference = reference_statistics(training, list(training.columns))
    served = pd.DataFrame(
        {
            "a": rng.normal(0, 1, N),
            "b": rng.normal(0.4, 1, N),  # PSI about 0.15
            "c": rng.normal(1.0, 1, N),
            "score": np.where(rng.random(N) < 0.25, np.nan, rng.normal(0, 1, N)),
            "not_in_reference": np.zeros(N),
        }
    )
    report = {item.name: item for item in drift_report(reference, served)}
    assert list(report) == ["a", "b", "c", "score"]  # "d" was not served
    assert report["a"].status == "ok"
    assert report["b"].status == "alert"  # JS distance alerts before PSI warns
    assert report["c"].status == "alert"
    assert report["c"].psi > 0.25
    assert report["score"].null_rate_served == pytest.approx(0.25, abs=0.01)
    assert report["score"].served_count == N
    lenient = DriftThresholds(js_alert=1.0, ks_alert=1.0)
    statuses = {item.name: item.status for item in drift_report(reference, served, lenient)}
    assert statuses == {"a": "ok", "b": "warn", "c": "alert", "score": "ok"}


def test_a_feature_served_only_as_nulls_alerts() -> None:
    reference = reference_statistics(pd.DataFrame({"a": np.arange(100.0)}), ["a"])
    (drift,) = drift_report(reference, pd.DataFrame({"a": [np.nan] * 10}))
    assert drift.status == "alert"
    assert drift.null_rate_served == 1.0


def test_rolling_drift_keeps_only_the_last_window_of_events() -> None:
    rng = np.random.default_rng(4)
    reference = reference_statistics(pd.DataFrame({"x": rng.normal(0, 1, N)}), ["x"])
    edges, shares = np.asarray(reference["x"].inner_edges), reference["x"].histogram
    rolling = RollingDrift(reference, window_events=300)
    for _ in range(5):
        rolling.update(pd.DataFrame({"x": rng.normal(0, 1, 100)}))
    assert rolling.events == 300
    assert rolling.psi_by_feature()["x"] < 0.1
    shifted = [rng.normal(2, 1, 100) for _ in range(3)]
    for batch in shifted:
        rolling.update(pd.DataFrame({"x": batch}))
    window = np.concatenate(shifted)
    assert rolling.psi_by_feature()["x"] == pytest.approx(
        psi(shares, served_bin_counts(edges, window)[0])
    )
    assert rolling.psi_by_feature()["x"] > 1.0


def test_rolling_drift_window_edges() -> None:
    reference = reference_statistics(pd.DataFrame({"x": np.arange(1000.0)}), ["x"])
    rolling = RollingDrift(reference, window_events=300)
    assert np.isnan(rolling.psi_by_feature()["x"])
    rolling.update(pd.DataFrame({"x": np.arange(200.0)}))
    rolling.update(pd.DataFrame({"x": np.arange(200.0)}))
    assert rolling.events == 200  # whole batches leave: the window may hold fewer than 300
    rolling.update(pd.DataFrame({"x": np.arange(1000.0)}))  # larger than the window
    assert rolling.events == 300
    tail = served_bin_counts(np.asarray(reference["x"].inner_edges), np.arange(700.0, 1000.0))
    assert rolling.psi_by_feature()["x"] == pytest.approx(psi(reference["x"].histogram, tail[0]))
    rolling.update(pd.DataFrame({"other": [1.0]}))  # reference features it lacks count as null
    assert rolling.events == 1  # the 300-event batch left as a whole
    assert np.isnan(rolling.psi_by_feature()["x"])
    with pytest.raises(ValueError, match="window_events"):
        RollingDrift(reference, window_events=0)
