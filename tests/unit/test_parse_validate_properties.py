"""Property: parse -> validate never raises; every input is an event in range or a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.events import (
    REASON_AMOUNT_TOO_LARGE,
    REASON_BAD_LABEL,
    REASON_BAD_TIMESTAMP,
    REASON_MISSING_FIELD,
    REASON_NEGATIVE_AMOUNT,
    REASON_NON_FINITE_AMOUNT,
    REASON_NOT_JSON,
    REASON_NOT_OBJECT,
    REASON_NOT_UTF8,
    REASON_OUT_OF_RANGE,
    REASON_TOMBSTONE,
    REASON_WRONG_TYPE,
    dead_letter,
    epoch_micros,
    parse_labels,
    parse_transactions,
)
from serving.validation import (
    REASON_TOO_FAR_AHEAD,
    REASON_TOO_LATE,
    EventLimits,
    StreamClock,
    validate_transactions,
)

LIMITS = EventLimits(max_tx_amount=1e9, allowed_lateness_us=7 * 86_400_000_000,
                     allowed_skew_us=3_600_000_000)  # fmt: skip
TRANSACTION_CODES = {
    REASON_TOMBSTONE, REASON_NOT_UTF8, REASON_NOT_JSON, REASON_NOT_OBJECT, REASON_MISSING_FIELD,
    REASON_WRONG_TYPE, REASON_OUT_OF_RANGE, REASON_BAD_TIMESTAMP, REASON_NEGATIVE_AMOUNT,
    REASON_NON_FINITE_AMOUNT, REASON_AMOUNT_TOO_LARGE, REASON_TOO_LATE, REASON_TOO_FAR_AHEAD,
}  # fmt: skip
LABEL_CODES = TRANSACTION_CODES | {REASON_BAD_LABEL}
NOW = datetime(2026, 10, 1, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
times = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)
time_texts = st.one_of(
    times.map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    times.map(lambda moment: moment.isoformat()),
    st.datetimes(min_value=datetime(2026, 9, 1), max_value=datetime(2026, 10, 2)).map(
        lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ),
    st.text(max_size=30),
)
ids = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
)
amounts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=2e9),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, 0.0, 1e9, 1e9 + 1, 1e308, -0.0, 5e-324]),
    st.text(max_size=8),
    st.none(),
)
FIELDS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")


@st.composite
def transaction_like(draw: st.DrawFn) -> dict[str, Any]:
    """Events that look valid: each field usually in form, sometimes not, sometimes missing."""
    values = {
        "transaction_id": draw(ids),
        "tx_datetime": draw(time_texts),
        "customer_id": draw(ids),
        "terminal_id": draw(ids),
        "tx_amount": draw(amounts),
        "tx_fraud": draw(st.integers(0, 1)),
        "label_time": draw(time_texts),
    }
    kept = draw(st.sets(st.sampled_from(list(values)), min_size=len(values) - 1))
    return {name: value for name, value in values.items() if name in kept}


def _encode(event: object) -> bytes:
    return json.dumps(event, allow_nan=True).encode()


records = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(_encode),
    transaction_like().map(_encode),
)


def _check_partition(batch: Any, count: int, codes: set[str]) -> None:
    """Every input index is accepted or rejected, once, and every rejection has a known code."""
    accepted = batch.rows.tolist()
    rejected = [index for index, _ in batch.rejected]
    assert sorted(accepted + rejected) == list(range(count))
    for _, exc in batch.rejected:
        assert exc.code in codes, exc.reason
        assert exc.reason.startswith(exc.code + ": ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(records, max_size=12),
    arrival_offsets_s=st.lists(st.integers(-(10**9), 10**9), min_size=12, max_size=12),
    sources=st.lists(st.integers(0, 2), min_size=12, max_size=12),
)
def test_parse_then_validate_never_raises_and_accounts_for_every_event(
    values: list[bytes | None], arrival_offsets_s: list[int], sources: list[int]
) -> None:
    arrivals = [epoch_micros(NOW + timedelta(seconds=offset)) for offset in arrival_offsets_s]
    clock = StreamClock(LIMITS)
    batch = validate_transactions(
        parse_transactions(values), arrivals[: len(values)], sources[: len(values)], clock
    )
    _check_partition(batch, len(values), TRANSACTION_CODES)
    amount = batch.columns["tx_amount"]
    assert np.isfinite(amount).all()
    assert ((amount >= 0) & (amount <= LIMITS.max_tx_amount)).all()
    when = batch.columns["tx_datetime"]
    ahead = when - np.asarray(arrivals, dtype=np.int64)[batch.rows]
    assert (ahead <= LIMITS.allowed_skew_us).all()
    for source, stream_time in clock.stream_times.items():
        mine = np.asarray(sources, dtype=np.int64)[batch.rows] == source
        assert (when[mine] >= stream_time - LIMITS.allowed_lateness_us).all()
    for index, exc in batch.rejected:  # each one can be written as a dead letter
        record = dead_letter(values[index], exc.reason, "transactions", 0, index)
        assert json.loads(record)["reason_code"] == exc.code


@settings(max_examples=200, deadline=None)
@given(values=st.lists(records, max_size=12))
def test_label_parsing_never_raises_and_accounts_for_every_label(
    values: list[bytes | None],
) -> None:
    _check_partition(parse_labels(values), len(values), LABEL_CODES)
