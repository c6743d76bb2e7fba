"""Cards already known to be compromised: what the handbook's test protocol leaves out.

The Fraud Detection Handbook (Le Borgne et al.) scores a model only on cards nobody knows to be
compromised yet: chapter 3's `get_train_test_set`, reused by chapter 5's `prequentialSplit` for
every fold, starts from the cards with a fraud in the training window, then before each test
day D adds the cards with a fraud on day D - delay - 1, and drops the known cards' transactions
from day D. With the labels of every day from the training window's start on, that is:

    a transaction of day D is left out when its card had a fraud on a day <= D - delay - 1

(7-day delay: the frauds up to D - 8 are known on day D; the delay days count as they become
known, and so would test days if the test window were longer than the delay plus one day).
Days are UTC calendar days. Training (`training/`) and live quality (`monitoring/`) share this
one rule, so their protocol figures compare.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

CARD = "customer_id"
LABELLED_COLUMNS = (CARD, "tx_datetime", "tx_fraud")


def _utc_days(times: pd.Series) -> pd.Series:
    return pd.to_datetime(times, utc=True).dt.floor("D")


def first_fraud_days(labelled: pd.DataFrame) -> pd.Series:
    """The UTC day of each card's first fraud in `labelled`, indexed by card.

    `labelled` holds transactions with `LABELLED_COLUMNS` (their labels, known or not yet:
    `known_compromised` decides what was known when); cards without a fraud are absent.
    """
    missing = [column for column in LABELLED_COLUMNS if column not in labelled.columns]
    if missing:
        raise ValueError(f"known frauds need the columns {missing}")
    frauds = labelled[labelled["tx_fraud"] > 0]
    days = _utc_days(frauds["tx_datetime"])
    return days.groupby(frauds[CARD].to_numpy()).min().rename("first_fraud_day")


def known_compromised(
    frame: pd.DataFrame, first_frauds: pd.Series, delay_days: int
) -> npt.NDArray[np.bool_]:
    """For each row of `frame` (`customer_id`, `tx_datetime`): was its card known compromised
    on the row's UTC day, i.e. had it a fraud (`first_frauds`) on a day <= day - delay - 1?"""
    if delay_days < 0:
        raise ValueError(f"the label delay cannot be negative, got {delay_days}")
    first = frame[CARD].map(first_frauds)
    known_from = first + pd.Timedelta(days=delay_days + 1)
    day = _utc_days(frame["tx_datetime"])
    return (known_from <= day).fillna(False).to_numpy(dtype=bool)
