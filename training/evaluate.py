"""Test-set evaluation of a fraud model: the metrics logged with every version, and plots.

The metrics themselves (AUC ROC, average precision, card precision top-k) are
`skewless.fraud_metrics`', shared with monitoring's live quality.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from skewless.fraud_metrics import (
    ArrayLike,
    auc_roc,
    average_precision,
    card_precision_at_k,
)

logger = logging.getLogger(__name__)

METRIC_KEYS = ("test_auc_roc", "test_average_precision", "test_card_precision_at_100")


def evaluate(frame: pd.DataFrame) -> dict[str, float]:
    """The test metrics logged with every model, from transactions with `tx_fraud` and `score`.

    `frame` needs the columns of `CARD_PRECISION_COLUMNS`; the keys are `METRIC_KEYS`.
    """
    labels = frame["tx_fraud"].to_numpy()
    scores = frame["score"].to_numpy(dtype=np.float64)
    metrics = {
        "test_auc_roc": auc_roc(labels, scores),
        "test_average_precision": average_precision(labels, scores),
        "test_card_precision_at_100": card_precision_at_k(frame, k=100),
    }
    logger.info(
        "test AUC ROC %.4f, average precision %.4f, card precision@100 %.4f",
        metrics["test_auc_roc"],
        metrics["test_average_precision"],
        metrics["test_card_precision_at_100"],
    )
    return metrics


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
