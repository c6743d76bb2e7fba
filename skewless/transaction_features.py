"""Per-transaction features: one formula, used by the on-demand feature view and both engines."""

from __future__ import annotations

import pandas as pd

NIGHT_LAST_HOUR = 6
"""A transaction is at night when its UTC hour is at most this (00:00 to 06:59)."""

WEEKEND_FIRST_DAY = 5
"""Monday is 0: Saturday (5) and Sunday (6) are the weekend, in UTC."""

TRANSACTION_FEATURES = ("tx_amount", "tx_during_weekend", "tx_during_night")


def during_weekend(event_time: pd.Series) -> pd.Series:
    """1 for a Saturday or Sunday (UTC), else 0."""
    return (_utc(event_time).dt.dayofweek >= WEEKEND_FIRST_DAY).astype("int64")


def during_night(event_time: pd.Series) -> pd.Series:
    """1 when the UTC hour is 0 to 6 inclusive, else 0."""
    return (_utc(event_time).dt.hour <= NIGHT_LAST_HOUR).astype("int64")


def add_transaction_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """A copy of `transactions` with the weekend and night flags added."""
    frame = transactions.copy()
    frame["tx_during_weekend"] = during_weekend(frame["tx_datetime"])
    frame["tx_during_night"] = during_night(frame["tx_datetime"])
    return frame


def _utc(event_time: pd.Series) -> pd.Series:
    times = pd.to_datetime(event_time, utc=True)
    return times
