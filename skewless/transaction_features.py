"""Per-transaction features: one formula for the on-demand feature view and both engines."""

from __future__ import annotations

import pandas as pd

NIGHT_LAST_HOUR = 6
"""A transaction is at night when its UTC hour is at most this (00:00 to 06:59)."""

WEEKEND_FIRST_DAY = 5
"""Monday is 0: Saturday (5) and Sunday (6) are the weekend, in UTC."""

TRANSACTION_FEATURES = ("amount", "during_weekend", "during_night")
"""The features computed from the transaction alone, in the order the model sees them."""


def transaction_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """`amount`, `during_weekend` and `during_night` from `tx_amount` and `tx_datetime`.

    The result has the index of `transactions`.
    """
    times = pd.to_datetime(transactions["tx_datetime"], utc=True)
    return pd.DataFrame(
        {
            "amount": transactions["tx_amount"].astype("float64"),
            "during_weekend": (times.dt.dayofweek >= WEEKEND_FIRST_DAY).astype("int64"),
            "during_night": (times.dt.hour <= NIGHT_LAST_HOUR).astype("int64"),
        },
        index=transactions.index,
    )


def add_transaction_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """`transactions` with the per-transaction features joined on."""
    return transactions.join(transaction_features(transactions))
