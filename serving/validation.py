"""Range rules for parsed transactions, applied before they touch the state or the model.

Parsing (`serving.events`) decides whether an event is well formed; these rules decide whether
its values lie where the features are defined. An event that breaks one is rejected with a
reason (it becomes a dead letter, or a 4xx answer at the HTTP door); the rest of its batch goes
on. No I/O here: the caller passes the batch, when each event arrived and where from.

Amounts: finite and >= 0 (parsing), and at most `max_tx_amount` (`SKEWLESS_MAX_TX_AMOUNT`,
default 1e9, at most 1e12), else `amount_too_large`. With that bound a window sum over n events
is at most n * 1e12, far from float64's 1.8e308, and every feature fits a float32, so no finite
input can turn into NaN or inf features, for its own customer or any other.

Event time, in microseconds, per *source* (a Kafka partition, or the HTTP door):

- `too_far_ahead`: dated more than `allowed_clock_skew_s` after the moment the event arrived
  (its Kafka record's timestamp, or the HTTP request). An event cannot happen after it was
  sent, beyond the disagreement of two clocks. The rule needs no state, so a far-future event
  is caught in the first batch after a start and alone in a batch at low load, and replaying
  the same records decides the same way; a replay of old data sends events dated long before
  their records, which are never ahead.
- `too_late`: older than the source's *stream time* minus `state_allowed_lateness_s`. The
  stream time is event time, not wall time: the largest, over the batches seen so far, of the
  (lower) median event time of each batch's events that were not too far ahead. The median,
  not the maximum, so that one odd event among many cannot move it (a maximum set by a single
  event dated months ahead would make every later event late). Per partition, because Kafka
  orders events only within a partition: one partition read ahead of another is not lateness.
  A source seen for the first time (after a start, a rebalance, a replay from the beginning)
  takes the median of its first batch, so it starts where its events are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.events import REASON_AMOUNT_TOO_LARGE, ParsedBatch, iso_times
from skewless.settings import Settings

REASON_TOO_LATE = "too_late"
REASON_TOO_FAR_AHEAD = "too_far_ahead"

MICROS_PER_SECOND = 1_000_000
_LAST_MILLISECOND = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z in milliseconds since the epoch: the last time an event can have."""


@dataclass(frozen=True)
class EventLimits:
    """The bounds of the rules (see the module doc); times in microseconds."""

    max_tx_amount: float
    allowed_lateness_us: int
    allowed_skew_us: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EventLimits:
        return cls(
            max_tx_amount=settings.max_tx_amount,
            allowed_lateness_us=round(settings.state_allowed_lateness_s * MICROS_PER_SECOND),
            allowed_skew_us=round(settings.allowed_clock_skew_s * MICROS_PER_SECOND),
        )


def arrival_micros(timestamps_ms: Sequence[int] | np.ndarray, now_ms: int) -> np.ndarray:
    """When Kafka records arrived, in microseconds: their timestamps, `now_ms` where none (-1).

    A record's timestamp is whatever its producer set; it is clamped to the years an event can
    have, so the arithmetic on it stays in int64.
    """
    stamps = np.asarray(timestamps_ms, dtype=np.int64)
    return np.where(stamps < 0, now_ms, np.minimum(stamps, _LAST_MILLISECOND)) * 1000


def amounts_too_large(amounts: np.ndarray, max_tx_amount: float) -> tuple[np.ndarray, list[str]]:
    """Which amounts exceed the bound, and a reason for each of those, in order."""
    over = amounts > max_tx_amount
    reasons = [
        f"{REASON_AMOUNT_TOO_LARGE}: tx_amount {amount!r} is above {max_tx_amount!r}"
        for amount in amounts[over].tolist()
    ]
    return over, reasons


def lower_median(times: np.ndarray) -> int:
    """The lower median of a non-empty int64 array, exactly (no float rounding)."""
    middle = (len(times) - 1) // 2
    return int(np.partition(times, middle)[middle])


def next_stream_time(times: np.ndarray, previous: int | None) -> int | None:
    """A source's stream time after a batch whose admissible event times are `times`."""
    if len(times) == 0:
        return previous
    median = lower_median(times)
    return median if previous is None else max(previous, median)


@dataclass
class StreamClock:
    """The stream time of every source seen so far, and the time rules applied with it."""

    limits: EventLimits
    stream_times: dict[int, int] = field(default_factory=dict)

    def check(
        self, times: np.ndarray, arrivals: np.ndarray, sources: np.ndarray
    ) -> tuple[np.ndarray, list[str]]:
        """Which events break a time rule, and why (in order); the stream times move on.

        `times`, `arrivals` (microseconds) and `sources` have one entry per event.
        """
        skew = self.limits.allowed_skew_us
        lateness = self.limits.allowed_lateness_us
        ahead = times - arrivals > skew
        reference = np.zeros(len(times), dtype=np.int64)
        late = np.zeros(len(times), dtype=bool)
        for source in np.unique(sources).tolist():
            mine = (sources == source) & ~ahead
            now = next_stream_time(times[mine], self.stream_times.get(source))
            if now is None:
                continue
            self.stream_times[source] = now
            reference[mine] = now
            late |= mine & (times < now - lateness)
        drop = ahead | late
        reasons = [
            _ahead_reason(when, arrived, skew) if is_ahead else _late_reason(when, ref, lateness)
            for when, arrived, ref, is_ahead in zip(
                times[drop].tolist(),
                arrivals[drop].tolist(),
                reference[drop].tolist(),
                ahead[drop].tolist(),
                strict=True,
            )
        ]
        return drop, reasons


def _iso(micros: int) -> str:
    return iso_times(np.array([micros], dtype=np.int64))[0]


def _ahead_reason(when: int, arrived: int, skew: int) -> str:
    return (
        f"{REASON_TOO_FAR_AHEAD}: tx_datetime {_iso(when)} is "
        f"{(when - arrived) / MICROS_PER_SECOND:.0f} s after the event arrived "
        f"({_iso(arrived)}); allowed clock skew {skew / MICROS_PER_SECOND:.0f} s"
    )


def _late_reason(when: int, stream_time: int, lateness: int) -> str:
    return (
        f"{REASON_TOO_LATE}: tx_datetime {_iso(when)} is "
        f"{(stream_time - when) / MICROS_PER_SECOND:.0f} s before the stream time "
        f"{_iso(stream_time)}; allowed lateness {lateness / MICROS_PER_SECOND:.0f} s"
    )


def validate_transactions(
    batch: ParsedBatch,
    arrivals: Sequence[int] | np.ndarray,
    sources: Sequence[int] | np.ndarray,
    clock: StreamClock,
) -> ParsedBatch:
    """`batch` without the events that break a rule (they join `rejected` with the reason).

    `arrivals` (microseconds since the epoch) and `sources` have one entry per *input* event
    of the batch, accepted or not, in input order.
    """
    over, reasons = amounts_too_large(batch.columns["tx_amount"], clock.limits.max_tx_amount)
    batch = batch.without(over, reasons)
    if len(batch) == 0:
        return batch
    rows = batch.rows
    drop, reasons = clock.check(
        batch.columns["tx_datetime"],
        np.asarray(arrivals, dtype=np.int64)[rows],
        np.asarray(sources, dtype=np.int64)[rows],
    )
    return batch.without(drop, reasons)
