"""Drift of served feature distributions against the training reference: PSI, JS distance, KS.

Every figure is computed over the reference's own bins (training quantiles with open outer
bins, see `skewless.statistics`; PSI and the bin counts are `skewless.psi`'s), so checking
served data costs one `searchsorted` and one `bincount` per feature and never needs the raw
training set. Nulls are left out of the
distributions and reported as null rates beside them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from skewless.psi import FloatArray, IntArray, float_values, psi, served_bin_counts
from skewless.statistics import FeatureStatistics

logger = logging.getLogger(__name__)

Status = Literal["ok", "warn", "alert"]


def js_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two histograms (counts or shares).

    NaN when either histogram is empty. Its square is the JS divergence.
    """
    left, right = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if left.sum() <= 0 or right.sum() <= 0:
        return float("nan")
    return float(jensenshannon(left, right, base=2))


def ks_statistic_binned(reference: FeatureStatistics, values: npt.ArrayLike) -> float:
    """Binned Kolmogorov-Smirnov statistic of served `values` against the reference.

    The largest gap between the reference CDF and the served values' empirical CDF, both
    taken at the reference's inner bin edges only. It needs no raw training data and is a
    lower bound of the exact two-sample statistic (exact for features whose every distinct
    value is an edge, e.g. flags and counts with few values). NaN without non-null values.
    """
    served = np.asarray(values, dtype=np.float64)
    counts, _ = served_bin_counts(np.asarray(reference.inner_edges, dtype=np.float64), served)
    return _binned_ks(np.asarray(reference.histogram, dtype=np.float64), counts)


def ks_statistic_exact(reference_values: npt.ArrayLike, values: npt.ArrayLike) -> float:
    """Exact two-sample KS statistic of the non-null values (needs the raw training values)."""
    left = np.asarray(reference_values, dtype=np.float64)
    right = np.asarray(values, dtype=np.float64)
    left, right = left[~np.isnan(left)], right[~np.isnan(right)]
    if left.size == 0 or right.size == 0:
        return float("nan")
    return float(ks_2samp(left, right).statistic)


def _binned_ks(reference_shares: FloatArray, counts: IntArray) -> float:
    """Max |reference CDF - served CDF| at the inner edges (the last bin's CDF is 1 for both)."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    gaps = np.cumsum(reference_shares)[:-1] - np.cumsum(counts)[:-1] / total
    return float(np.max(np.abs(gaps), initial=0.0))


@dataclass(frozen=True)
class DriftThresholds:
    """Above `psi_warn` a feature warns; above any `*_alert` figure it alerts.

    For small changes JS distance squared is about PSI / (8 ln 2), so `js_alert=0.1` fires
    from a PSI near 0.055 - before `psi_warn`: with these defaults JS is the sensitive check
    (it catches the 0.3-sigma shifts PSI misses) and "warn" is rarely reached.
    """

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    js_alert: float = 0.1
    ks_alert: float = 0.2


@dataclass(frozen=True)
class FeatureDrift:
    """Drift figures of one feature: served values against the training reference."""

    name: str
    psi: float
    js: float
    """Jensen-Shannon distance (base 2) of the bin shares."""
    ks: float
    """Binned KS statistic, or the exact one when raw reference values were given."""
    null_rate_reference: float
    null_rate_served: float
    served_count: int
    """Served rows, nulls included."""
    status: Status


def drift_status(psi_value: float, js: float, ks: float, thresholds: DriftThresholds) -> Status:
    """ "alert", "warn" or "ok"; a feature with no served values (NaN figures) alerts."""
    if np.isnan(psi_value):
        return "alert"
    if psi_value > thresholds.psi_alert or js > thresholds.js_alert or ks > thresholds.ks_alert:
        return "alert"
    return "warn" if psi_value > thresholds.psi_warn else "ok"


def feature_drift(
    reference: FeatureStatistics,
    values: FloatArray,
    thresholds: DriftThresholds = DriftThresholds(),
    reference_values: FloatArray | None = None,
) -> FeatureDrift:
    """Drift of one feature's served `values` (float64, NaN for null)."""
    shares = np.asarray(reference.histogram, dtype=np.float64)
    counts, nulls = served_bin_counts(np.asarray(reference.inner_edges, dtype=np.float64), values)
    psi_value, js = psi(shares, counts), js_distance(shares, counts)
    if reference_values is None:
        ks = _binned_ks(shares, counts)
    else:
        ks = ks_statistic_exact(reference_values, values)
    return FeatureDrift(
        name=reference.name,
        psi=psi_value,
        js=js,
        ks=ks,
        null_rate_reference=reference.null_rate,
        null_rate_served=nulls / len(values) if len(values) else float("nan"),
        served_count=len(values),
        status=drift_status(psi_value, js, ks, thresholds),
    )


def drift_report(
    reference: dict[str, FeatureStatistics],
    served: pd.DataFrame,
    thresholds: DriftThresholds = DriftThresholds(),
    reference_values: pd.DataFrame | None = None,
) -> list[FeatureDrift]:
    """Drift of every reference feature (and `score`, when referenced) that `served` has.

    With `reference_values` (the raw training frame) the KS figure is the exact two-sample
    statistic for the columns it holds; otherwise the binned one.
    """
    report = []
    for name, stats in reference.items():
        if name not in served.columns:
            logger.warning("feature %s is in the reference but was not served", name)
            continue
        raw = None
        if reference_values is not None and name in reference_values.columns:
            raw = float_values(reference_values[name])
        report.append(feature_drift(stats, float_values(served[name]), thresholds, raw))
    alerts = [drift.name for drift in report if drift.status == "alert"]
    logger.info("drift over %d rows: %d features, alerts %s", len(served), len(report), alerts)
    return report
