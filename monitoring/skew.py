"""Training/serving skew: the features served online against an offline recomputation.

Both frames are indexed by `transaction_id` and hold the same feature columns: what the
streaming worker served for a transaction, and what the offline pipeline computes for the same
entity and event time. They are inner-joined on the id and compared value by value (counts of
null disagreements and of mismatches beyond a tolerance, SMAPE, largest difference) and as
distributions (JS divergence over the reference bins).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from monitoring.drift import FloatArray, float_values, js_distance, served_bin_counts
from skewless.statistics import DEFAULT_BINS, FeatureStatistics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkewTolerance:
    """Two non-null values match when |a - b| <= max(absolute, relative * max(|a|, |b|))."""

    relative: float = 1e-9
    absolute: float = 1e-12


@dataclass(frozen=True)
class SkewThresholds:
    """A feature breaches above either figure."""

    max_mismatch_rate: float = 0.001
    max_js: float = 0.05


@dataclass(frozen=True)
class FeatureSkew:
    """Online vs offline values of one feature over the transactions found in both frames."""

    name: str
    total: int
    """Joined rows (transactions with both an online and an offline row)."""
    both_null: int
    online_only_null: int
    offline_only_null: int
    mismatches: int
    """Rows with both values present that differ beyond the tolerance."""
    mismatch_rate: float
    """(mismatches + online_only_null + offline_only_null) / total: rows that disagree."""
    smape: float
    """Mean of 2|a - b| / (|a| + |b|) over rows with both present and not both zero (0 when
    all such pairs are zero, NaN without pairs)."""
    max_abs_diff: float
    js_divergence: float
    """JS divergence (base 2, the squared distance) of the online vs offline bin shares."""
    online_without_offline: int = 0
    """Online rows whose transaction_id the offline frame lacks (same for every feature)."""


def skew_report(
    online: pd.DataFrame,
    offline: pd.DataFrame,
    features: list[str],
    reference: dict[str, FeatureStatistics] | None = None,
    tolerance: SkewTolerance = SkewTolerance(),
) -> list[FeatureSkew]:
    """Skew of each of `features` between `online` and `offline` (both indexed by transaction).

    Duplicated transaction ids online (an at-least-once replay) keep their last row; offline,
    where the recomputation gives one row per transaction, they are refused. Distributions
    are bucketed with the reference's bins when `reference` has the feature, else with
    quantile bins of the offline values.
    """
    for side, frame in (("online", online), ("offline", offline)):
        missing = [name for name in features if name not in frame.columns]
        if missing:
            raise ValueError(f"the {side} frame lacks the features {missing}")
    if offline.index.has_duplicates:
        repeated = offline.index[offline.index.duplicated()].unique()
        raise ValueError(
            f"the offline frame has {len(repeated)} repeated transaction ids "
            f"(e.g. {list(repeated[:5])}): the recomputation gives one row per transaction"
        )
    online = _unique(online, "online")
    joined = online.index.intersection(offline.index)
    unmatched = len(online) - len(joined)
    if unmatched:
        logger.warning("%d of %d online rows have no offline counterpart", unmatched, len(online))
    report = []
    for name in features:
        a = float_values(online[name].reindex(joined))
        b = float_values(offline[name].reindex(joined))
        edges = _edges(name, b, reference)
        report.append(_feature_skew(name, a, b, edges, tolerance, unmatched))
    return report


def _unique(frame: pd.DataFrame, side: str) -> pd.DataFrame:
    """`frame` without repeated index values (last row kept, like the feature log reader)."""
    repeated = frame.index.duplicated(keep="last")
    if repeated.any():
        logger.warning("%s frame: %d repeated transaction ids dropped", side, repeated.sum())
        return frame[~repeated]
    return frame


def _edges(
    name: str, offline: FloatArray, reference: dict[str, FeatureStatistics] | None
) -> FloatArray:
    """The reference's inner edges of `name`, else inner quantile edges of the offline values."""
    if reference is not None and name in reference:
        return np.asarray(reference[name].inner_edges, dtype=np.float64)
    present = offline[~np.isnan(offline)]
    if present.size == 0:
        return np.empty(0, dtype=np.float64)
    return np.unique(np.quantile(present, np.linspace(0, 1, DEFAULT_BINS + 1)[1:-1]))


def _feature_skew(
    name: str,
    online: FloatArray,
    offline: FloatArray,
    edges: FloatArray,
    tolerance: SkewTolerance,
    unmatched: int,
) -> FeatureSkew:
    """Compare one feature's joined online and offline values (NaN for null)."""
    online_null, offline_null = np.isnan(online), np.isnan(offline)
    both = ~online_null & ~offline_null
    a, b = online[both], offline[both]
    diff = np.abs(a - b)
    magnitude = np.maximum(np.abs(a), np.abs(b))
    allowed = np.maximum(tolerance.absolute, tolerance.relative * magnitude)
    mismatches = int(np.count_nonzero(diff > allowed))
    online_only, offline_only = online_null & ~offline_null, offline_null & ~online_null
    online_only_null, offline_only_null = int(online_only.sum()), int(offline_only.sum())
    total = len(online)
    disagreeing = mismatches + online_only_null + offline_only_null
    denominator = np.abs(a) + np.abs(b)
    nonzero = denominator > 0
    smape = float(np.mean(2 * diff[nonzero] / denominator[nonzero])) if nonzero.any() else 0.0
    if not both.any():
        smape = float("nan")
    online_counts, _ = served_bin_counts(edges, online)
    offline_counts, _ = served_bin_counts(edges, offline)
    return FeatureSkew(
        name=name,
        total=total,
        both_null=int(np.count_nonzero(online_null & offline_null)),
        online_only_null=online_only_null,
        offline_only_null=offline_only_null,
        mismatches=mismatches,
        mismatch_rate=disagreeing / total if total else float("nan"),
        smape=smape,
        max_abs_diff=float(diff.max()) if diff.size else float("nan"),
        js_divergence=js_distance(online_counts, offline_counts) ** 2,
        online_without_offline=unmatched,
    )


def breaches(report: list[FeatureSkew], thresholds: SkewThresholds = SkewThresholds()) -> list[str]:
    """One line per feature above a threshold, naming it and the figures that breach."""
    lines = []
    for skew in report:
        reasons = []
        if skew.total == 0:
            reasons.append("no transaction is in both the online and the offline frame")
        if skew.mismatch_rate > thresholds.max_mismatch_rate:
            reasons.append(
                f"{skew.mismatch_rate:.4%} of {skew.total} joined rows disagree "
                f"(max {thresholds.max_mismatch_rate:.4%}): {skew.mismatches} value mismatches, "
                f"{skew.online_only_null} null online only, "
                f"{skew.offline_only_null} null offline only"
            )
        if skew.js_divergence > thresholds.max_js:
            reasons.append(f"JS divergence {skew.js_divergence:.4f} (max {thresholds.max_js:.4f})")
        if reasons:
            lines.append(f"{skew.name}: " + "; ".join(reasons))
    return lines
