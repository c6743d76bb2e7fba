"""Quality metrics of fraud scores: AUC ROC, average precision, card precision top-k.

`card_precision_at_k` follows the definition of the Fraud Detection Handbook (Le Borgne et al.,
chapter 4, "Precision top-k metrics"): investigators check k cards a day; a card is a hit when
it had at least one fraudulent transaction that day; cards found compromised by the top-k of an
earlier day are known and leave later days' rankings.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

ArrayLike = npt.ArrayLike
CARD_PRECISION_COLUMNS = ("customer_id", "tx_datetime", "tx_fraud", "score")


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


def quality_metrics(frame: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    """AUC ROC, average precision and card precision@100 of scored transactions.

    `frame` has the columns of `CARD_PRECISION_COLUMNS` and both classes; the keys are
    "auc_roc", "average_precision" and "card_precision_at_100", each after `prefix`.
    """
    labels = frame["tx_fraud"].to_numpy()
    scores = frame["score"].to_numpy(dtype=np.float64)
    return {
        f"{prefix}auc_roc": auc_roc(labels, scores),
        f"{prefix}average_precision": average_precision(labels, scores),
        f"{prefix}card_precision_at_100": card_precision_at_k(frame, k=100),
    }
