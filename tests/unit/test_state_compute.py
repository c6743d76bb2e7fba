"""The pure parts of the streaming state: tile declarations, keys, members, features from sums."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from redis.crc import key_slot

from feature_repo.aggregations import CUSTOMER_SPENDING, STATE_TILES, TERMINAL_RISK
from skewless.aggregation import StateTiles
from skewless.stream_state import LAYOUT, StreamAggregation


def test_tiles_must_nest_and_be_positive() -> None:
    with pytest.raises(ValueError, match="multiple"):
        StateTiles(widths=(timedelta(hours=1), timedelta(minutes=7)))
    with pytest.raises(ValueError, match="positive"):
        StateTiles(widths=(timedelta(0),))
    with pytest.raises(ValueError, match="negative"):
        StateTiles(raw_scan_max=-1)
    assert STATE_TILES.widths[0] == timedelta(days=1)


def test_every_key_of_an_entity_shares_one_hash_tag() -> None:
    agg = StreamAggregation(TERMINAL_RISK, "p")
    events, tiles, arrays, index, known, pending = agg.keys(42)
    assert events.startswith(f"p:{LAYOUT}.".encode()) and events.endswith(b":{terminal_risk:42}:e")
    head = events[:-1]
    assert (tiles, arrays, index, known, pending) == tuple(
        head + n for n in (b"t", b"a", b"i", b"k", b"p")
    )
    assert len({key_slot(key) for key in agg.keys(42)}) == 1
    assert agg.slot(42) == key_slot(b"terminal_risk:42")
    other = StreamAggregation(TERMINAL_RISK, "p", StateTiles(raw_scan_max=3)).keys(42)[0]
    assert other != events  # other tiles, other keys
    with pytest.raises(ValueError, match="braces"):
        StreamAggregation(TERMINAL_RISK, "p{x}")


def test_members_order_like_time_then_order_key_as_bytes() -> None:
    agg = StreamAggregation(CUSTOMER_SPENDING)
    times = np.array([5, 5, 5, 6], dtype=np.int64)
    orders = np.array([-3, 2, 1 << 40, -9], dtype=np.int64)
    packed = agg.pack(times, orders, {"tx_amount": np.zeros(4)})
    size = agg.dtype.itemsize
    members = [packed[i : i + size] for i in range(0, len(packed), size)]
    # Same time: bytes order = order key order, negative keys first.
    assert [m[8:16] for m in members[:3]] == sorted(m[8:16] for m in members[:3])
    with pytest.raises(ValueError, match="2\\*\\*53"):
        agg.pack(np.array([1 << 53]), np.array([1]), {"tx_amount": np.zeros(1)})


def test_values_are_packed_in_whole_units_rounded_half_to_even() -> None:
    agg = StreamAggregation(CUSTOMER_SPENDING)  # (decimals=2: cents)
    amounts = np.array([69.77, 348.85, 0.005, 0.015, 1e12, 0.0])
    packed = agg.pack(np.arange(6), np.arange(6), {"tx_amount": amounts})
    cents = np.frombuffer(packed, agg.dtype)["tx_amount"]
    np.testing.assert_array_equal(cents, [6977, 34885, 0, 2, 1e14, 0])


def test_features_from_counts_and_sums_with_empty_and_incomplete_windows() -> None:
    agg = StreamAggregation(CUSTOMER_SPENDING)
    # per window (1, 7, 30 days): count, sum of tx_amount in cents
    aggregates = np.array([
        [2, 3000.0, 4, 10000.0, 4, 10000.0],
        [0, 0.0, 0, 0.0, 1, 750.0],
        [np.nan, np.nan, 1, 200.0, np.nan, np.nan],
    ])  # fmt: skip
    features = agg.features(aggregates)
    assert CUSTOMER_SPENDING.feature_names[:2] == ("customer_tx_count_1d", "customer_avg_amount_1d")
    np.testing.assert_array_equal(features[0], [2, 15.0, 4, 25.0, 4, 25.0])
    np.testing.assert_array_equal(features[1], [0, 0.0, 0, 0.0, 1, 7.5])
    assert np.isnan(features[2, [0, 1, 4, 5]]).all()
    np.testing.assert_array_equal(features[2, [2, 3]], [1, 2.0])


def test_function_arguments_carry_the_declaration() -> None:
    agg = StreamAggregation(TERMINAL_RISK, tiles=StateTiles(raw_scan_max=3))
    day = 86_400 * 10**6
    widths = [day, day // 24, day // 1440]
    windows = [days * day for days in (1, 2, 3, 7, 14, 21, 30)]
    numbers = [3, *widths, 7, *windows, 7 * day, 37 * day, 7 * day, 1, 3, -np.inf]
    assert np.frombuffer(agg.config, "<f8").tolist() == numbers
    loading = agg.call([(5, b"", b"", b"")], until=123)
    config = loading[3 + int(loading[2])]  # after the keys
    assert np.frombuffer(config, "<f8").tolist() == [*numbers[:-1], 123]
