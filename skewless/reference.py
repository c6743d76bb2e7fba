"""The pure reference implementation of the feature declaration: the oracle for both engines.

Small frames only (pandas + numpy, one entity at a time). The Spark backfill and the streaming
updater are tested against it; it is tested against a brute force written in the tests.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from skewless.aggregation import Function, WindowAggregation
from skewless.transaction_features import add_transaction_features


def window_aggregates(events: pd.DataFrame, declaration: WindowAggregation) -> pd.DataFrame:
    """Every feature of `declaration` for every event, indexed like `events`.

    `events` holds at least the entity key, the event-time column, the order key and the
    value columns the outputs read.
    """
    ordered = events.sort_values([declaration.event_time, declaration.order_key], kind="stable")
    result = pd.DataFrame(index=ordered.index)
    columns: dict[str, np.ndarray] = {
        name: np.empty(len(ordered)) for name in declaration.feature_names
    }
    times_all = ordered[declaration.event_time].to_numpy(dtype="datetime64[us]").astype(np.int64)
    keys_all = ordered[declaration.entity_key].to_numpy()
    positions = pd.Series(np.arange(len(ordered))).groupby(keys_all, sort=False).indices
    delay = _micros(declaration.delay_days)
    scale = declaration.unit_scale
    values_of = {  # (in whole units: their sums are exact)
        column: np.rint(ordered[column].to_numpy(dtype=np.float64) * scale)
        for column in declaration.value_columns
    }
    for rows in positions.values():
        times = times_all[rows]
        for days in declaration.windows_days:
            lower, upper = _window_bounds(
                times, delay, _micros(days), ends_at_event=declaration.delay_days == 0
            )
            counts = upper - lower
            for output in declaration.outputs:
                name = output.feature_name(days)
                if output.function is Function.COUNT:
                    columns[name][rows] = counts
                    continue
                assert output.column is not None
                values = values_of[output.column][rows]
                prefix = np.concatenate([[0.0], np.cumsum(values)])
                sums = prefix[upper] - prefix[lower]
                with np.errstate(invalid="ignore", divide="ignore"):
                    means = np.where(
                        counts > 0, sums / scale / np.maximum(counts, 1), output.empty_value
                    )
                columns[name][rows] = means
    for name, values in columns.items():
        is_count = name in declaration.count_features
        result[name] = values.astype(np.int64) if is_count else values
    return result.reindex(events.index)


def _window_bounds(
    times: np.ndarray, delay: int, width: int, ends_at_event: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Index range [lower, upper) of each event's window within one entity's sorted events."""
    if ends_at_event:
        upper = np.arange(1, len(times) + 1)
    else:
        upper = np.searchsorted(times, times - delay, side="right")
    lower = np.searchsorted(times, times - delay - width, side="right")
    return lower, np.maximum(upper, lower)


def _micros(days: int) -> int:
    return days * 86_400 * 1_000_000


def feature_frame(
    transactions: pd.DataFrame, declarations: Iterable[WindowAggregation]
) -> pd.DataFrame:
    """Transactions with the per-transaction features and every declared window aggregate."""
    frame = add_transaction_features(transactions)
    for declaration in declarations:
        frame = frame.join(window_aggregates(transactions, declaration))
    return frame
