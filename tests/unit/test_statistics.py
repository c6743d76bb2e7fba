"""Reference statistics: quantile bins, open outer bins, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skewless.statistics import (
    feature_statistics,
    load_statistics,
    reference_statistics,
    save_statistics,
)


def test_continuous_feature_has_equal_mass_bins() -> None:
    values = np.random.default_rng(0).normal(50, 10, 10_000)
    stats = feature_statistics("amount", values)
    assert len(stats.inner_edges) == 9
    assert np.allclose(stats.histogram, 0.1, atol=0.002)
    assert abs(stats.mean - 50) < 0.5
    assert stats.null_rate == 0.0


def test_discrete_feature_edges_collapse_and_nulls_are_counted() -> None:
    values = np.array([0, 0, 0, 1, 1, 2, np.nan, np.nan], dtype=float)
    stats = feature_statistics("during_night", values)
    assert stats.inner_edges == sorted(set(stats.inner_edges))
    assert stats.null_rate == 0.25
    assert sum(stats.histogram) == pytest.approx(1.0)


def test_values_outside_training_range_fall_in_outer_bins() -> None:
    stats = feature_statistics("x", np.arange(100, dtype=float))
    counts = stats.bin_counts(np.array([-1e9, 1e9, np.nan]))
    assert counts[0] == 1
    assert counts[-1] == 1
    assert counts.sum() == 2


def test_json_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(50.0), "b": np.ones(50)})
    stats = reference_statistics(frame, ["a", "b"])
    loaded = load_statistics(save_statistics(stats, tmp_path / "s.json"))
    assert loaded == stats
