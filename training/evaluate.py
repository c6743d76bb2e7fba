"""Test-set evaluation of a fraud model: the metrics logged with every version, and plots.

Every figure is logged twice (names in `skewless.registry`): `test_protocol_*` on the
handbook's test set (the test window without the cards already known compromised on each day,
`skewless.known_frauds`), the figures compared with the published ones and gated on, and
`test_all_*` on every transaction of the test window. The metrics themselves (AUC ROC, average
precision, card precision top-k) are `skewless.fraud_metrics`', shared with live quality.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from skewless.fraud_metrics import ArrayLike, auc_roc, average_precision, quality_metrics
from skewless.registry import METRIC_NAMES, METRICS, PROTOCOL_PREFIX, WHOLE_WINDOW_PREFIX

logger = logging.getLogger(__name__)

METRIC_KEYS = METRICS


def evaluate(frame: pd.DataFrame, known_compromised: npt.ArrayLike) -> dict[str, float]:
    """The test metrics logged with every model, keys `METRIC_KEYS`.

    `frame`: the scored test window (`CARD_PRECISION_COLUMNS`); `known_compromised`: one flag
    per row, set where the row's card was known compromised on its day (those rows leave the
    protocol figures, not the whole-window ones).
    """
    known = np.asarray(known_compromised, dtype=bool)
    if known.shape != (len(frame),):
        raise ValueError(f"need one known-compromised flag per row: {known.shape}, {len(frame)}")
    result = quality_metrics(frame[~known], PROTOCOL_PREFIX)
    result |= quality_metrics(frame, WHOLE_WINDOW_PREFIX)
    for prefix, label, rows in (
        (PROTOCOL_PREFIX, "handbook protocol", int((~known).sum())),
        (WHOLE_WINDOW_PREFIX, "whole test window", len(frame)),
    ):
        logger.info(
            "%s, %d transactions: AUC ROC %.4f, average precision %.4f, card precision@100 %.4f",
            label,
            rows,
            *(result[prefix + name] for name in METRIC_NAMES),
        )
    return result


def plot_roc(labels: ArrayLike, scores: ArrayLike, path: Path) -> Path:
    """Write the ROC curve (with its AUC and the chance diagonal) to a PNG file."""
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.plot(
        false_positive_rate, true_positive_rate, label=f"AUC ROC = {auc_roc(labels, scores):.3f}"
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    axes.legend(loc="lower right")
    return _save(figure, path)


def plot_precision_recall(labels: ArrayLike, scores: ArrayLike, path: Path) -> Path:
    """Write the precision-recall curve (with its AP and the base rate) to a PNG file."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    base_rate = float(np.mean(np.asarray(labels) > 0))
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.step(
        recall,
        precision,
        where="post",
        label=f"AP = {average_precision(labels, scores):.3f}",
    )
    axes.axhline(base_rate, linestyle="--", color="grey", label=f"base rate = {base_rate:.4f}")
    axes.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve", ylim=(0.0, 1.05))
    axes.legend(loc="upper right")
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    """Render with the Agg canvas (no pyplot, no display, no global backend switch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    logger.info("wrote %s", path)
    return path
