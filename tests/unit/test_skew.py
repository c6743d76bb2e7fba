"""Training/serving skew: join on transaction id, null and tolerance accounting, breaches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitoring.skew import SkewThresholds, SkewTolerance, breaches, skew_report
from skewless.statistics import reference_statistics

NAN = np.nan


def frame(ids: list[int], **columns: list[float] | np.ndarray) -> pd.DataFrame:
    """A feature frame indexed by transaction_id."""
    return pd.DataFrame(columns, index=pd.Index(ids, name="transaction_id"))


def hand_made() -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per case; id 99 is online only, id 100 offline only."""
    cases = {  # transaction_id: (online, offline)
        1: (NAN, NAN),  # both null
        2: (NAN, 5.0),  # online-only null
        3: (5.0, NAN),  # offline-only null
        4: (10.0, 10.0),  # equal
        5: (1000.0, 1000.0 * (1 + 2e-9)),  # relative difference just above 1e-9: mismatch
        6: (1000.0, 1000.0 * (1 + 0.5e-9)),  # just below: match
        7: (0.0, 0.0),  # both zero: no SMAPE term
        8: (0.0, 5e-13),  # below the absolute tolerance: match
        9: (0.0, 2e-12),  # above the absolute tolerance: mismatch
        99: (1.0, NAN),
    }
    online_ids = list(cases)
    offline_ids = [i for i in cases if i != 99] + [100]
    online = frame(online_ids, amount=[cases[i][0] for i in online_ids])
    offline = frame(offline_ids, amount=[cases[i][1] for i in offline_ids[:-1]] + [3.0])
    return online, offline.iloc[::-1]  # order must not matter


def test_skew_report_counts_each_kind_of_disagreement() -> None:
    online, offline = hand_made()
    (skew,) = skew_report(online, offline, ["amount"])
    assert skew.name == "amount"
    assert skew.total == 9
    assert skew.online_without_offline == 1
    assert skew.both_null == 1
    assert skew.online_only_null == 1
    assert skew.offline_only_null == 1
    assert skew.mismatches == 2  # ids 5 and 9
    assert skew.mismatch_rate == pytest.approx(4 / 9)
    assert skew.max_abs_diff == pytest.approx(2e-6, rel=1e-3)


def test_a_looser_tolerance_accepts_the_small_differences() -> None:
    online, offline = hand_made()
    (skew,) = skew_report(online, offline, ["amount"], tolerance=SkewTolerance(1e-6, 1e-9))
    assert skew.mismatches == 0
    assert skew.mismatch_rate == pytest.approx(2 / 9)


def test_smape_skips_pairs_that_are_both_zero() -> None:
    online = frame([1, 2, 3, 4], x=[1.0, 2.0, 0.0, NAN])
    offline = frame([1, 2, 3, 4], x=[1.0, 4.0, 0.0, 7.0])
    (skew,) = skew_report(online, offline, ["x"])
    assert skew.smape == pytest.approx((0 + 2 * 2 / 6) / 2)
    assert skew.max_abs_diff == 2.0


def test_js_divergence_uses_reference_bins_or_offline_quantiles() -> None:
    rng = np.random.default_rng(5)
    ids = list(range(5_000))
    values = rng.normal(0, 1, len(ids))
    reference = reference_statistics(pd.DataFrame({"x": rng.normal(0, 1, 20_000)}), ["x"])
    same = skew_report(frame(ids, x=values), frame(ids, x=values), ["x"], reference)[0]
    assert same.js_divergence == pytest.approx(0.0, abs=1e-12)
    assert same.mismatches == 0
    for bins in (reference, None):
        (shifted,) = skew_report(frame(ids, x=values + 1.0), frame(ids, x=values), ["x"], bins)
        assert shifted.js_divergence > 0.05
        assert shifted.mismatch_rate == 1.0


def test_repeated_transaction_ids_keep_the_last_row() -> None:
    online = frame([1, 1, 2], x=[9.0, 1.0, 2.0])
    offline = frame([1, 2], x=[1.0, 2.0])
    (skew,) = skew_report(online, offline, ["x"])
    assert skew.total == 2
    assert skew.mismatches == 0


def test_repeated_transaction_ids_offline_are_refused() -> None:
    """The recomputation gives one row per transaction: a repeat there is a bug, not noise."""
    online = frame([1, 2], x=[1.0, 2.0])
    offline = frame([1, 1, 2], x=[9.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="1 repeated transaction ids"):
        skew_report(online, offline, ["x"])


def test_missing_feature_is_an_error() -> None:
    with pytest.raises(ValueError, match="offline frame lacks"):
        skew_report(frame([1], x=[1.0], y=[2.0]), frame([1], x=[1.0]), ["x", "y"])


def test_breaches_name_the_feature_and_the_figure() -> None:
    online, offline = hand_made()
    online["clean"] = 1.0
    offline["clean"] = 1.0
    report = skew_report(online, offline, ["amount", "clean"])
    lines = breaches(report, SkewThresholds())
    assert len(lines) == 1
    assert lines[0].startswith("amount: ")
    assert "44.4444%" in lines[0]
    assert "2 value mismatches" in lines[0]
    assert breaches(report, SkewThresholds(max_mismatch_rate=0.5, max_js=1.0)) == []
    rng = np.random.default_rng(6)
    ids = list(range(2_000))
    values = rng.normal(0, 1, len(ids))
    drifted = skew_report(frame(ids, z=values + 2), frame(ids, z=values), ["z"])
    (line,) = breaches(drifted, SkewThresholds(max_mismatch_rate=1.0))
    assert line.startswith("z: JS divergence ")


def test_no_joined_rows_is_a_breach() -> None:
    report = skew_report(frame([1], x=[1.0]), frame([2], x=[1.0]), ["x"])
    assert report[0].total == 0
    assert report[0].online_without_offline == 1
    assert breaches(report) == ["x: no transaction is in both the online and the offline frame"]
