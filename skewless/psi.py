"""Population stability index of served values against the reference bins, batch and rolling.

The pure part of drift that the scoring worker's gauges share with the monitoring report:
served values are counted into the reference's own bins (training quantiles with open outer
bins, see `skewless.statistics`), so a check never needs the raw training set.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt
import pandas as pd

from skewless.statistics import FeatureStatistics

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
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
