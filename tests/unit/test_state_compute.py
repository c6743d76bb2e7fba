"""Window features computed from packed members: any time span, no leaks between entities."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from feature_repo.aggregations import CUSTOMER_SPENDING, TERMINAL_RISK
from serving.events import epoch_micros
from skewless.aggregation import WindowAggregation
from skewless.stream_state import MICROS_PER_DAY, StreamAggregation, segment_cumsum

NOW = epoch_micros(datetime(2026, 10, 1, tzinfo=UTC))

Members = dict[int, list[tuple[int, int, float]]]
"""entity id -> its members as (time, order key, value), in (time, order) order."""


def _compute(
    decl: WindowAggregation, members: Members, events: list[tuple[int, int, int]]
) -> np.ndarray:
    """Features of `events` (entity, time, order key) as the state computes them."""
    agg = StreamAggregation(decl)
    entity_ids = np.array(sorted(members), dtype=np.int64)
    packed = b""
    for entity in entity_ids.tolist():
        rows = members[entity]
        packed += b"".join(
            agg.pack(
                np.array([t for t, _, _ in rows], dtype=np.int64),
                np.array([o for _, o, _ in rows], dtype=np.int64),
                {decl.value_columns[0]: np.array([v for _, _, v in rows])},
            )
        )
    counts = np.array([len(members[e]) for e in entity_ids.tolist()], dtype=np.int64)
    return agg.compute(
        np.array([e for e, _, _ in events], dtype=np.int64),
        np.array([t for _, t, _ in events], dtype=np.int64),
        np.array([o for _, _, o in events], dtype=np.int64),
        entity_ids,
        packed,
        counts,
    )


def test_segment_sums_restart_at_every_segment_short_or_long() -> None:
    rng = np.random.default_rng(3)
    lengths = [1, 2, 63, 64, 65, 200, 3, 1000, 1]
    values = rng.random(sum(lengths)) * 100
    starts = np.cumsum([0, *lengths[:-1]])
    sums = segment_cumsum(values, starts)
    for start, length in zip(starts.tolist(), lengths, strict=True):
        want = np.cumsum(values[start : start + length])
        np.testing.assert_allclose(sums[start : start + length], want, rtol=1e-13)
    assert len(segment_cumsum(np.array([]), np.array([], dtype=np.int64))) == 0


@pytest.mark.parametrize("poisoned_length", [5, 500])
def test_a_huge_value_in_one_segment_changes_no_bit_of_another(poisoned_length: int) -> None:
    rng = np.random.default_rng(4)
    lengths = [poisoned_length, 40, 300]
    values = rng.random(sum(lengths)) * 100
    starts = np.cumsum([0, *lengths[:-1]])
    clean = segment_cumsum(values, starts)
    values[: lengths[0]] = 1e308
    with np.errstate(over="ignore"):  # the poisoned segment itself overflows, and only it
        poisoned = segment_cumsum(values, starts)
    assert np.isinf(poisoned[lengths[0] - 1])
    assert np.array_equal(poisoned[lengths[0] :], clean[lengths[0] :])


def test_a_huge_amount_of_one_customer_leaves_the_others_features_exact() -> None:
    hour = MICROS_PER_DAY // 24
    others: Members = {
        customer: [
            (NOW - k * hour, 10 * customer + k, 10.0 + k + customer) for k in range(5, -1, -1)
        ]
        for customer in (2, 3, 4)
    }
    events = [(customer, NOW, 10 * customer) for customer in (2, 3, 4)]
    alone = _compute(CUSTOMER_SPENDING, others, events)
    poisoned = {1: [(NOW - 2 * hour, 1, 1e308), (NOW - hour, 2, 1e308), (NOW, 3, 1e308)], **others}
    with np.errstate(over="ignore"):  # customer 1's own sums overflow, and only they
        together = _compute(CUSTOMER_SPENDING, poisoned, [(1, NOW, 3), *events])
    assert np.array_equal(together[1:], alone)
    assert np.isfinite(alone).all()
    assert together[1:, 1].tolist() == [12.5 + customer for customer in (2, 3, 4)]


YEARS = [1, 1969, 2026, 2099, 9999]


@pytest.mark.parametrize("entities", [3, 60])  # 60 entities over 9998 years: computed in groups
def test_any_time_span_in_one_batch_is_computed_and_equals_each_entity_alone(
    entities: int,
) -> None:
    members: Members = {}
    events = []
    for entity in range(entities):
        year = YEARS[entity % len(YEARS)]
        start = epoch_micros(datetime(year, 6, 1, tzinfo=UTC))
        members[entity] = [
            (start + k * MICROS_PER_DAY, entity * 100 + k, float(k)) for k in range(4)
        ]
        events.append((entity, start + 3 * MICROS_PER_DAY, entity * 100 + 3))
    together = _compute(CUSTOMER_SPENDING, members, events)
    for index, (entity, when, order) in enumerate(events):
        alone = _compute(CUSTOMER_SPENDING, {entity: members[entity]}, [(entity, when, order)])
        assert np.array_equal(together[index], alone[0])
    # counts 1d, 7d, 30d: the event itself; 4 events in 7 and 30 days; means of 3 / 0..3
    assert together[:, [0, 2, 4]].tolist() == [[1, 4, 4]] * entities
    assert together[:, [1, 3, 5]].tolist() == [[3.0, 1.5, 1.5]] * entities


def test_delayed_windows_across_any_span() -> None:
    start_1969 = epoch_micros(datetime(1969, 1, 1, tzinfo=UTC))
    members: Members = {
        7: [(start_1969, 1, 1.0), (start_1969 + MICROS_PER_DAY, 2, 0.0)],
        8: [(NOW - 10 * MICROS_PER_DAY, 3, 1.0)],
    }
    events = [(7, start_1969 + 9 * MICROS_PER_DAY, 4), (8, NOW, 5), (9, NOW + 10**15, 6)]
    members[9] = []
    features = _compute(TERMINAL_RISK, members, events)
    assert features[:, [0, 2, 4]].tolist() == [[0, 2, 2], [0, 1, 1], [0, 0, 0]]
    assert features[:, [3, 5]].tolist() == [[0.5, 0.5], [1.0, 1.0], [0.0, 0.0]]
