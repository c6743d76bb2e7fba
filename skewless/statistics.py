"""Per-feature reference statistics of a training set: what drift and skew compare against.

Bin edges are the training quantiles (repeated edges of discrete features collapse), with
open-ended outer bins so every served value falls in a bin. Computed once at training time,
logged with the model, reused by every check.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_BINS = 10


@dataclass(frozen=True)
class FeatureStatistics:
    """Distribution summary of one feature in the training set."""

    name: str
    count: int
    null_rate: float
    mean: float
    std: float
    minimum: float
    maximum: float
    inner_edges: list[float]
    """Bin edges between the outer bins: bins are (-inf, e0], (e0, e1], ..., (ek, +inf)."""
    histogram: list[float]
    """Share of non-null training values in each bin (sums to 1)."""

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """Counts of non-null `values` in this feature's bins."""
        finite = values[~np.isnan(values)]
        index = np.searchsorted(np.asarray(self.inner_edges), finite, side="left")
        return np.bincount(index, minlength=len(self.inner_edges) + 1).astype(np.float64)


TAIL_QUANTILES = (0.95, 0.99, 0.999)
"""Extra upper edges of a feature whose tail matters (the score: the frauds live there)."""


def feature_statistics(
    name: str, values: np.ndarray, bins: int = DEFAULT_BINS, tail: bool = False
) -> FeatureStatistics:
    """Reference statistics of one feature's training values; `tail` adds upper-tail bins."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if present.size == 0:
        return FeatureStatistics(name, len(values), 1.0, 0.0, 0.0, 0.0, 0.0, [], [1.0])
    levels = np.linspace(0, 1, bins + 1)[1:-1]
    if tail:
        levels = np.concatenate([levels, TAIL_QUANTILES])
    quantiles = np.quantile(present, np.sort(levels))
    edges = [float(edge) for edge in np.unique(quantiles)]
    stats = FeatureStatistics(
        name=name,
        count=len(values),
        null_rate=float(1 - present.size / len(values)),
        mean=float(present.mean()),
        std=float(present.std()),
        minimum=float(present.min()),
        maximum=float(present.max()),
        inner_edges=edges,
        histogram=[],
    )
    counts = stats.bin_counts(present)
    return FeatureStatistics(**{**asdict(stats), "histogram": (counts / counts.sum()).tolist()})


def reference_statistics(
    frame: pd.DataFrame,
    features: list[str],
    bins: int = DEFAULT_BINS,
    tail_features: Collection[str] = (),
) -> dict[str, FeatureStatistics]:
    """Statistics of every feature column of `frame`; `tail_features` get upper-tail bins."""
    return {
        name: feature_statistics(
            name, frame[name].to_numpy(dtype=np.float64), bins, tail=name in tail_features
        )
        for name in features
    }


def save_statistics(statistics: dict[str, FeatureStatistics], path: Path) -> Path:
    """Write the statistics as JSON."""
    path.write_text(json.dumps({name: asdict(s) for name, s in statistics.items()}, indent=1))
    return path


def load_statistics(path: Path) -> dict[str, FeatureStatistics]:
    """Read statistics written by `save_statistics`."""
    raw = json.loads(path.read_text())
    return {name: FeatureStatistics(**fields) for name, fields in raw.items()}
