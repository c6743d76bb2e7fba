"""Per-transaction features: one formula for the on-demand feature view and both engines."""

from __future__ import annotations

import numpy as np
import pandas as pd

NIGHT_LAST_HOUR = 6
"""A transaction is at night when its UTC hour is at most this (00:00 to 06:59)."""

WEEKEND_FIRST_DAY = 5
"""Monday is 0: Saturday (5) and Sunday (6) are the weekend, in UTC."""

TRANSACTION_FEATURES = ("amount", "during_weekend", "during_night")
"""The features computed from the transaction alone, in the order the model sees them."""


_MICROS_PER_HOUR = 3_600_000_000
_EPOCH_WEEKDAY = 3
"""1970-01-01 was a Thursday (Monday is 0)."""


def transaction_feature_arrays(amounts: np.ndarray, micros: np.ndarray) -> dict[str, np.ndarray]:
    """The formula: `amount`, `during_weekend`, `during_night` from amounts and UTC times.

    `micros` are microseconds since the epoch (int64); floor division keeps times before 1970
    on the right day and hour.
    """
    hours = np.asarray(micros, dtype=np.int64) // _MICROS_PER_HOUR
    weekday = (hours // 24 + _EPOCH_WEEKDAY) % 7
    return {
        "amount": np.asarray(amounts, dtype=np.float64),
        "during_weekend": (weekday >= WEEKEND_FIRST_DAY).astype(np.int64),
        "during_night": (hours % 24 <= NIGHT_LAST_HOUR).astype(np.int64),
    }


def transaction_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """`amount`, `during_weekend` and `during_night` from `tx_amount` and `tx_datetime`.

    The result has the index of `transactions`.
    """
    times = pd.to_datetime(transactions["tx_datetime"], utc=True)
    micros = times.to_numpy(dtype="datetime64[us]").astype(np.int64)
    amounts = transactions["tx_amount"].to_numpy(dtype=np.float64)
    return pd.DataFrame(transaction_feature_arrays(amounts, micros), index=transactions.index)


def add_transaction_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """`transactions` with the per-transaction features joined on."""
    return transactions.join(transaction_features(transactions))
