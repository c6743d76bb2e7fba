"""Range rules for parsed transactions: amount bounds, lateness and clock skew per source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from serving.events import Transaction, encode_transaction, epoch_micros, parse_transactions
from serving.validation import (
    EventLimits,
    StreamClock,
    amounts_too_large,
    arrival_micros,
    lower_median,
    next_stream_time,
    validate_transactions,
)
from skewless.settings import load_settings

HOUR = 3_600_000_000
DAY = 24 * HOUR
LIMITS = EventLimits(max_tx_amount=1e9, allowed_lateness_us=7 * DAY, allowed_skew_us=HOUR)
NOW = datetime(2026, 10, 1, 12, tzinfo=UTC)


def _us(moment: datetime) -> int:
    return epoch_micros(moment)


def _events(times: list[datetime], amounts: list[float] | None = None) -> list[bytes]:
    amounts = amounts or [10.0] * len(times)
    return [
        encode_transaction(Transaction(index, when, 7, 9, amount))
        for index, (when, amount) in enumerate(zip(times, amounts, strict=True))
    ]


def _codes(values: list[bytes], clock: StreamClock, arrived: datetime = NOW) -> dict[int, str]:
    batch = validate_transactions(
        parse_transactions(values), [_us(arrived)] * len(values), [0] * len(values), clock
    )
    return {index: exc.code for index, exc in batch.rejected}


def test_limits_come_from_the_settings() -> None:
    settings = load_settings(
        max_tx_amount=5e6, state_allowed_lateness_s=3600, allowed_clock_skew_s=1.5
    )
    assert EventLimits.from_settings(settings) == EventLimits(5e6, HOUR, 1_500_000)
    defaults = EventLimits.from_settings(load_settings())
    assert defaults == EventLimits(1e9, 7 * DAY, HOUR)


def test_amounts_above_the_bound_are_named() -> None:
    over, reasons = amounts_too_large(np.array([0.0, 1e9, 1e9 + 1, 1e308]), 1e9)
    assert over.tolist() == [False, False, True, True]
    assert reasons == [
        "amount_too_large: tx_amount 1000000001.0 is above 1000000000.0",
        "amount_too_large: tx_amount 1e+308 is above 1000000000.0",
    ]


def test_the_lower_median_is_exact_and_the_stream_time_only_moves_forward() -> None:
    times = np.array([5, 1, 4, 2], dtype=np.int64)
    assert lower_median(times) == 2
    assert lower_median(np.array([1_780_000_000_000_001], dtype=np.int64)) == 1_780_000_000_000_001
    assert next_stream_time(times, None) == 2
    assert next_stream_time(times, 3) == 3
    assert next_stream_time(np.array([9, 9, 9]), 3) == 9
    assert next_stream_time(np.array([], dtype=np.int64), 3) == 3
    assert next_stream_time(np.array([], dtype=np.int64), None) is None


def test_a_record_without_a_timestamp_arrived_now_and_absurd_ones_are_clamped() -> None:
    arrived = arrival_micros([1_790_000_000_123, -1, 2**62], now_ms=1_790_000_000_000)
    assert arrived.tolist() == [
        1_790_000_000_123_000,
        1_790_000_000_000_000,
        253_402_300_799_999_000,
    ]


def test_2099_and_1970_among_current_events_are_rejected_in_the_first_batch() -> None:
    current = [NOW - timedelta(minutes=minutes) for minutes in range(6)]
    times = [*current[:3], datetime(2099, 1, 1, tzinfo=UTC), *current[3:]]
    times.insert(2, datetime(1970, 1, 1, tzinfo=UTC))
    clock = StreamClock(LIMITS)
    assert _codes(_events(times), clock) == {2: "too_late", 4: "too_far_ahead"}
    assert clock.stream_times[0] <= _us(NOW)


def test_before_1970_is_too_late_and_the_reason_says_by_how_much() -> None:
    clock = StreamClock(LIMITS)
    values = _events([NOW, datetime(1969, 12, 31, tzinfo=UTC), NOW])
    batch = validate_transactions(parse_transactions(values), [_us(NOW)] * 3, [0] * 3, clock)
    assert batch.rows.tolist() == [0, 2]
    [(index, exc)] = batch.rejected
    assert index == 1
    assert exc.reason.startswith("too_late: tx_datetime 1969-12-31T00:00:00.000000Z is ")
    assert "before the stream time 2026-10-01T12:00:00.000000Z" in exc.reason
    assert exc.reason.endswith("allowed lateness 604800 s")


def test_april_among_october_is_too_late() -> None:
    april = datetime(2026, 4, 1, tzinfo=UTC)
    october = [datetime(2026, 10, 1, tzinfo=UTC) + timedelta(seconds=s) for s in range(4)]
    assert _codes(_events([*october[:2], april, *october[2:]]), StreamClock(LIMITS)) == {
        2: "too_late"
    }


def test_lateness_counts_from_the_stream_time_of_earlier_batches() -> None:
    clock = StreamClock(LIMITS)
    assert _codes(_events([NOW]), clock) == {}
    late = NOW - timedelta(days=7, seconds=1)
    just_in_time = NOW - timedelta(days=7)
    assert _codes(_events([late, just_in_time]), clock) == {0: "too_late"}


def test_ahead_is_judged_against_the_arrival_not_the_stream() -> None:
    """A gap in the stream is not an error; a date after the event was sent is."""
    clock = StreamClock(LIMITS)
    assert _codes(_events([NOW - timedelta(days=30)]), clock) == {}
    assert _codes(_events([NOW]), clock) == {}  # 30 days later in event time: a gap, fine
    assert _codes(_events([NOW + timedelta(minutes=59)]), clock) == {}
    assert _codes(_events([NOW + timedelta(minutes=61)]), clock) == {0: "too_far_ahead"}


def test_a_lone_far_future_event_does_not_move_the_stream_time() -> None:
    clock = StreamClock(LIMITS)
    assert _codes(_events([datetime(2099, 1, 1, tzinfo=UTC)]), clock) == {0: "too_far_ahead"}
    assert clock.stream_times == {}
    assert _codes(_events([NOW - timedelta(days=100)]), clock) == {}


def test_one_odd_event_among_many_does_not_move_the_stream_time() -> None:
    """Replaying May in November: a typo dated October is accepted but May goes on."""
    may = [datetime(2026, 5, 10, tzinfo=UTC) + timedelta(minutes=m) for m in range(9)]
    clock = StreamClock(LIMITS)
    assert _codes(_events([*may[:4], datetime(2026, 10, 1, tzinfo=UTC), *may[4:]]), clock) == {}
    assert clock.stream_times[0] == _us(may[4])
    assert _codes(_events(may), clock) == {}


def test_each_partition_keeps_its_own_stream_time() -> None:
    """Partition 1 read days behind partition 0 is not late."""
    clock = StreamClock(LIMITS)
    ahead = [NOW - timedelta(days=1)] * 3
    behind = [NOW - timedelta(days=20)] * 3
    values = _events([*ahead, *behind])
    batch = validate_transactions(
        parse_transactions(values), [_us(NOW)] * 6, [0, 0, 0, 1, 1, 1], clock
    )
    assert batch.rejected == []
    assert clock.stream_times == {0: _us(ahead[0]), 1: _us(behind[0])}


def test_amount_and_time_rules_together_keep_the_others_in_order() -> None:
    times = [NOW, NOW, datetime(2099, 1, 1, tzinfo=UTC), NOW]
    values = [b"not json", *_events(times, [1.0, 1e308, 2.0, 3.0])]
    batch = validate_transactions(
        parse_transactions(values), [_us(NOW)] * 5, [0] * 5, StreamClock(LIMITS)
    )
    assert batch.rows.tolist() == [1, 4]
    assert batch.columns["tx_amount"].tolist() == [1.0, 3.0]
    assert [(index, exc.code) for index, exc in batch.rejected] == [
        (0, "not_json"),
        (2, "amount_too_large"),
        (3, "too_far_ahead"),
    ]


@pytest.mark.parametrize("sources", [[0, 0], [3, 4]])
def test_nothing_accepted_leaves_the_clock_alone(sources: list[int]) -> None:
    clock = StreamClock(LIMITS)
    values = _events([NOW, NOW], [1e12, 1e12])
    batch = validate_transactions(parse_transactions(values), [_us(NOW)] * 2, sources, clock)
    assert len(batch) == 0
    assert clock.stream_times == {}
