"""Test-set metrics of a fraud model: AUC ROC, average precision, card precision top-k, plots.

`card_precision_at_k` follows the definition of the Fraud Detection Handbook (Le Borgne et al.,
chapter 4, "Precision top-k metrics"): investigators check k cards a day; a card is a hit when
it had at least one fraudulent transaction that day; cards found compromised by the top-k of an
earlier day are known and leave later days' rankings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

logger = logging.getLogger(__name__)

ArrayLike = npt.ArrayLike
CARD_PRECISION_COLUMNS = ("customer_id", "tx_datetime", "tx_fraud", "score")
METRIC_KEYS = ("test_auc_roc", "test_average_precision", "test_card_precision_at_100")


def auc_roc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; both classes must be present."""
    return float(roc_auc_score(labels, scores))


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision (area under the step-wise precision-recall curve)."""
    return float(average_precision_score(labels, scores))


def card_precision_per_day(frame: pd.DataFrame, k: int = 100) -> pd.Series:
    """Card precision top-k of each UTC calendar day of `frame`, in day order.

    `frame` has one row per transaction with the columns of `CARD_PRECISION_COLUMNS`.
    For each day: a card's score is its highest transaction score that day and it is
    compromised when any of its transactions that day is a fraud. Cards detected on an earlier
    day (compromised and ranked in that day's top k) are dropped; the rest are ranked by score
    (ties broken by ascending customer_id, so the result is deterministic) and the day's
    precision is the number of compromised cards among the top k divided by k - also on a day
    with fewer than k cards, as in the handbook.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    missing = [column for column in CARD_PRECISION_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"card precision needs the columns {missing}")
    if frame.empty:
        raise ValueError("card precision needs at least one transaction")
    days = pd.to_datetime(frame["tx_datetime"], utc=True).dt.floor("D")
    cards = (
        pd.DataFrame(
            {
                "day": days,
                "customer_id": frame["customer_id"],
                "score": frame["score"].astype(np.float64),
                "compromised": frame["tx_fraud"] > 0,
            }
        )
        .groupby(["day", "customer_id"], sort=True)
        .agg(score=("score", "max"), compromised=("compromised", "max"))
        .reset_index()
    )
    detected: set[int] = set()
    precisions: dict[pd.Timestamp, float] = {}
    for day, day_cards in cards.groupby("day", sort=True):
        candidates = day_cards[~day_cards["customer_id"].isin(detected)]
        top = candidates.sort_values("score", ascending=False, kind="stable").head(k)
        hits = top.loc[top["compromised"], "customer_id"]
        precisions[cast(pd.Timestamp, day)] = len(hits) / k
        detected.update(int(customer) for customer in hits)
    return pd.Series(precisions, name=f"card_precision_at_{k}", dtype=np.float64)


def card_precision_at_k(frame: pd.DataFrame, k: int = 100) -> float:
    """Mean over the days of `frame` of the daily card precision top-k (see above)."""
    return float(card_precision_per_day(frame, k).mean())


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
