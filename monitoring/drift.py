"""Drift of served feature distributions against the training reference: PSI, JS distance, KS.

Every figure is computed over the reference's own bins (training quantiles with open outer
bins, see `skewless.statistics`), so checking served data costs one `searchsorted` and one
`bincount` per feature and never needs the raw training set. Nulls are left out of the
distributions and reported as null rates beside them.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from skewless.statistics import FeatureStatistics

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Status = Literal["ok", "warn", "alert"]
MAX_COMPARISON_EDGES = 32


def psi(
    expected_shares: npt.ArrayLike, actual_counts: npt.ArrayLike, epsilon: float = 1e-4
) -> float:
    """Population stability index sum((a - e) * ln(a / e)) of actual vs expected bin shares.

    Shares below `epsilon` are raised to it so that empty bins give a large finite term
    instead of infinity. NaN when `actual_counts` is empty.
    """
    expected = np.clip(np.asarray(expected_shares, dtype=np.float64), epsilon, None)
    counts = np.asarray(actual_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    actual = np.clip(counts / total, epsilon, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def js_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two histograms (counts or shares).

    NaN when either histogram is empty. Its square is the JS divergence.
    """
    left, right = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if left.sum() <= 0 or right.sum() <= 0:
        return float("nan")
    return float(jensenshannon(left, right, base=2))


def served_bin_counts(edges: FloatArray, values: FloatArray) -> tuple[IntArray, int]:
    """Counts of the non-null `values` in the bins of `edges`, and the number of nulls.

    Same bins as `FeatureStatistics.bin_counts`. With few edges (the usual ten quantile bins)
    one vectorised `values <= edge` count per edge gives the CDF and is several times faster
    than a `searchsorted` of every value; NaN compares false and so stays out of every bin.
    """
    nulls = int(np.count_nonzero(np.isnan(values)))
    if len(edges) > MAX_COMPARISON_EDGES:
        index = np.searchsorted(edges, values, side="left")  # NaN sorts into the last bin
        counts = np.bincount(index, minlength=len(edges) + 1).astype(np.int64)
        counts[-1] -= nulls
        return counts, nulls
    at_or_below = np.array([np.count_nonzero(values <= edge) for edge in edges], dtype=np.int64)
    return np.diff(at_or_below, prepend=0, append=len(values) - nulls), nulls


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


def float_values(column: pd.Series) -> FloatArray:
    """A column as float64 with NaN for nulls (no copy when it already is float64)."""
    if column.dtype == np.float64:
        return column.to_numpy()
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


class RollingDrift:
    """PSI of the last `window_events` served events per feature, fed batch by batch.

    Keeps a ring of per-batch bin-count vectors and their running sum; after each batch the
    oldest batches leave until the window holds at most `window_events` events (so it holds
    between `window_events` minus one batch and `window_events`). A batch larger than the
    window contributes its last `window_events` rows. Bookkeeping is O(features x bins).
    """

    def __init__(self, reference: dict[str, FeatureStatistics], window_events: int) -> None:
        """Track every feature of `reference`; `window_events` must be at least 1."""
        if window_events < 1:
            raise ValueError(f"window_events must be at least 1, got {window_events}")
        self.window_events = window_events
        self._edges = {n: np.asarray(s.inner_edges, dtype=np.float64) for n, s in reference.items()}
        self._shares = {n: np.asarray(s.histogram, dtype=np.float64) for n, s in reference.items()}
        self._totals = {n: np.zeros(len(e) + 1, dtype=np.int64) for n, e in self._edges.items()}
        self._ring: deque[tuple[int, dict[str, IntArray]]] = deque()
        self._events = 0

    @property
    def events(self) -> int:
        """Events currently in the window."""
        return self._events

    def update(self, features: pd.DataFrame) -> None:
        """Add one batch of served rows; reference features it lacks count as null."""
        if features.empty:
            return
        batch = features.iloc[-self.window_events :]
        counts = {
            name: served_bin_counts(edges, float_values(batch[name]))[0]
            for name, edges in self._edges.items()
            if name in batch.columns
        }
        self._ring.append((len(batch), counts))
        self._add(counts, sign=1)
        self._events += len(batch)
        while self._events > self.window_events:
            size, old = self._ring.popleft()
            self._add(old, sign=-1)
            self._events -= size

    def _add(self, counts: dict[str, IntArray], sign: int) -> None:
        for name, vector in counts.items():
            self._totals[name] += sign * vector

    def psi_by_feature(self) -> dict[str, float]:
        """Current PSI of each feature (NaN while its window has no non-null value)."""
        return {name: psi(self._shares[name], totals) for name, totals in self._totals.items()}
