"""Streaming window state in Redis, derived from the same declarations as the Spark backfill.

Each entity of a declaration keeps its recent events in a Redis sorted set (score: event time
in microseconds; member: event time as little-endian int64, order key as big-endian offset
binary, value columns as little-endian float64). Redis orders members of equal score by their
bytes, so with this layout a range read comes back already in (event time, order key) order
and nothing is sorted in Python. A declaration without delay is fed by transactions; a delayed
one (its values include the label) is fed by label events. Features are computed from the
members with exactly the semantics of `skewless.aggregation`: for an event at `t`, members
with `t - d - w < e <= t - d`, and with `d = 0` only members at or before the event in
(event time, order key) order. Members are idempotent (a replayed event re-adds the same
bytes), so at-least-once delivery never double counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain

import numpy as np
import pandas as pd
import redis

from skewless import redis_batch
from skewless.aggregation import Function, WindowAggregation
from skewless.redis_batch import Command

logger = logging.getLogger(__name__)

MICROS_PER_DAY = 86_400 * 1_000_000
KEY_PREFIX = "skewless:state"
LAYOUT = "m2"
"""Part of every key: a member layout change gets new keys instead of misreading old ones."""
_ORDER_BIAS = np.uint64(1 << 63)
_MAX_KEY = (1 << 63) - 1
"""Keys of `StreamAggregation.compute` (entity slot * time span + time offset) stay below it."""
_SCAN_LONG_SEGMENT = 64
"""`segment_cumsum` scans segments up to this long by doubling, longer ones one by one."""


Columns = Mapping[str, np.ndarray]
"""A batch of events as one array per column; event times as int64 microseconds (UTC)."""


def to_micros(times: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of a UTC datetime column."""
    return pd.to_datetime(times, utc=True).to_numpy(dtype="datetime64[us]").astype(np.int64)


def as_columns(events: pd.DataFrame | Columns) -> Columns:
    """`events` as columns: a frame's datetime columns become microseconds."""
    if not isinstance(events, pd.DataFrame):
        return events
    columns: dict[str, np.ndarray] = {}
    for name, column in events.items():
        if pd.api.types.is_datetime64_any_dtype(column):
            columns[str(name)] = to_micros(column)
        else:
            columns[str(name)] = column.to_numpy()
    return columns


@dataclass(frozen=True)
class StreamAggregation:
    """How one declaration is kept in Redis and computed from its members."""

    declaration: WindowAggregation
    prefix: str = KEY_PREFIX
    dtype: np.dtype = field(init=False, repr=False, compare=False)
    _key_head: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        columns = [("time", "<i8"), ("order", ">u8")]
        columns += [(name, "<f8") for name in self.declaration.value_columns]
        object.__setattr__(self, "dtype", np.dtype(columns))
        object.__setattr__(
            self, "_key_head", f"{self.prefix}:{LAYOUT}:{self.declaration.name}:".encode()
        )

    @property
    def fed_by_labels(self) -> bool:
        """A delayed declaration waits for labels; an undelayed one reads transactions."""
        return self.declaration.delay_days > 0

    @property
    def horizon_micros(self) -> int:
        return self.declaration.horizon.days * MICROS_PER_DAY

    def key_bytes(self, entity_id: int) -> bytes:
        return b"%s%d" % (self._key_head, entity_id)

    def pack(
        self, times: np.ndarray, orders: np.ndarray, values: Mapping[str, np.ndarray]
    ) -> list[bytes]:
        """One member per event: its time, order key and value columns as packed bytes."""
        records = np.empty(len(times), dtype=self.dtype)
        records["time"] = times
        records["order"] = orders.astype(np.int64).view(np.uint64) ^ _ORDER_BIAS
        for name in self.declaration.value_columns:
            records[name] = values[name]
        size = self.dtype.itemsize
        raw = records.tobytes()
        return [raw[i : i + size] for i in range(0, len(raw), size)]

    def compute(
        self,
        event_entities: np.ndarray,
        event_times: np.ndarray,
        event_orders: np.ndarray,
        entity_ids: np.ndarray,
        members: bytes,
        member_counts: np.ndarray,
    ) -> np.ndarray:
        """The declaration's features for each event, from its entity's members.

        `entity_ids` are the batch's entities in ascending order; `members` holds their packed
        members one entity after the other, `member_counts[i]` of them for `entity_ids[i]`.
        Vectorised over the batch: members of all entities are laid out in one array sorted
        by (entity, time, order) under one int64 key, `entity slot * shift + time offset`, and
        each window bound is one `searchsorted`. The shift is the batch's time span, so any span
        fits; when the entities times the span would overflow int64 (events decades apart),
        the entities are computed in groups small enough for the key (results are the same:
        each entity's features depend on its own members only).
        """
        decl = self.declaration
        result = np.zeros((len(event_times), len(decl.feature_names)))
        if len(event_times) == 0:
            return result
        stacked = np.frombuffer(members, dtype=self.dtype)
        member_times = stacked["time"]
        base = int(event_times.min()) - self.horizon_micros - 1
        top = int(event_times.max())
        if len(stacked):
            base = min(base, int(member_times.min()) - 1)
            top = max(top, int(member_times.max()))
        shift = top - base + 1
        per_group = max(1, min(len(entity_ids), _MAX_KEY // shift - 1))
        member_ends = np.cumsum(member_counts)
        member_starts = member_ends - member_counts
        event_slot = np.searchsorted(entity_ids, event_entities)
        for first in range(0, len(entity_ids), per_group):
            last = min(first + per_group, len(entity_ids))
            mine = (event_slot >= first) & (event_slot < last)
            if not mine.any():
                continue
            low, high = int(member_starts[first]), int(member_ends[last - 1])
            result[mine] = self._compute_group(
                event_slot[mine] - first,
                event_times[mine],
                event_orders[mine],
                stacked[low:high],
                np.asarray(member_counts[first:last]),
                base,
                shift,
            )
        return result

    def _compute_group(
        self,
        event_slot: np.ndarray,
        event_times: np.ndarray,
        event_orders: np.ndarray,
        stacked: np.ndarray,
        member_counts: np.ndarray,
        base: int,
        shift: int,
    ) -> np.ndarray:
        """`compute` for entities whose keys fit int64: `slot * shift + time - base`."""
        decl = self.declaration
        result = np.zeros((len(event_times), len(decl.feature_names)))
        owner = np.repeat(np.arange(len(member_counts)), member_counts)
        member_times = stacked["time"]
        member_orders = (stacked["order"].astype(np.uint64) ^ _ORDER_BIAS).view(np.int64)
        keys = owner * shift + (member_times - base)
        if len(keys) > 1 and (np.diff(keys) < 0).any():  # not as Redis promises: sort here
            order = np.lexsort((member_orders, member_times, owner))
            stacked, owner, keys = stacked[order], owner[order], keys[order]
            member_orders = member_orders[order]
        event_keys = event_slot * shift + (event_times - base)
        delay = decl.delay_days * MICROS_PER_DAY
        if decl.delay_days == 0:
            upper = _after_own_member(keys, member_orders, event_keys, event_orders)
        else:
            upper = np.searchsorted(keys, event_keys - delay, side="right")
        # Running sums restart at each entity, so one entity's values (however large) never
        # touch another's sums: a window's sum is inclusive[last] - exclusive[first].
        starts = np.flatnonzero(np.diff(owner, prepend=-1))
        running = {name: segment_cumsum(stacked[name], starts) for name in decl.value_columns}
        column = 0
        for days in decl.windows_days:
            lower_key = event_keys - delay - days * MICROS_PER_DAY
            lower = np.searchsorted(keys, lower_key, side="right")
            lower = np.minimum(lower, upper)
            count = upper - lower
            for output in decl.outputs:
                if output.function is Function.COUNT:
                    result[:, column] = count
                else:
                    assert output.column is not None
                    result[:, column] = output.empty_value
                    has = np.flatnonzero(count > 0)
                    if len(has):
                        values = stacked[output.column]
                        inclusive = running[output.column]
                        first, last = lower[has], upper[has] - 1
                        sums = inclusive[last] - (inclusive[first] - values[first])
                        result[has, column] = sums / count[has]
                column += 1
        return result


def segment_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Running sums of `values` that restart at each of the segment `starts` (ascending, 0 first).

    Each element sums only its own segment's values up to it, so a huge value in one segment
    cannot cost another segment any precision. Segments up to `_SCAN_LONG_SEGMENT` long are
    scanned together by doubling (at most log2 of that many numpy passes over them); longer
    ones are summed one by one with `np.cumsum`.
    """
    sums = np.array(values, dtype=np.float64)
    if len(sums) == 0:
        return sums
    ends = np.append(starts[1:], len(sums))
    lengths = ends - starts
    short = np.repeat(lengths <= _SCAN_LONG_SEGMENT, lengths)
    scanned = sums[short]
    owner = np.repeat(np.arange(len(starts)), lengths)[short]
    step = 1
    longest_short = int(lengths[lengths <= _SCAN_LONG_SEGMENT].max(initial=0))
    while step < longest_short:
        same = owner[step:] == owner[:-step]
        scanned[step:] = scanned[step:] + np.where(same, scanned[:-step], 0.0)
        step *= 2
    sums[short] = scanned
    long = lengths > _SCAN_LONG_SEGMENT
    for start, end in zip(starts[long].tolist(), ends[long].tolist(), strict=True):
        sums[start:end] = np.cumsum(values[start:end])
    return sums


def _after_own_member(
    keys: np.ndarray, member_orders: np.ndarray, event_keys: np.ndarray, event_orders: np.ndarray
) -> np.ndarray:
    """Index just past each event's own member (the event is in the state before it is scored).

    Members are sorted by (entity and time key, order key); an event's own member is the one
    with its key and its order key, and the members before it at the same time are those with
    a smaller order key.
    """
    first = np.searchsorted(keys, event_keys, side="left")
    last = np.searchsorted(keys, event_keys, side="right")
    upper = last.copy()
    tied = np.flatnonzero(last - first != 1)
    single = np.flatnonzero(last - first == 1)
    missing = member_orders[first[single]] != event_orders[single]
    for index in tied.tolist():  # several members at the same microsecond (or none): rare
        orders = member_orders[first[index] : last[index]]
        if event_orders[index] not in orders:
            missing = np.append(missing, True)
        upper[index] = first[index] + int(np.count_nonzero(orders <= event_orders[index]))
    if missing.any():
        raise KeyError("an event being scored is missing from its entity's state")
    return upper


class StreamState:
    """All declarations' streaming state in one Redis, one pipeline per batch."""

    def __init__(
        self,
        client: redis.Redis,
        declarations: Sequence[WindowAggregation],
        prefix: str = KEY_PREFIX,
    ) -> None:
        self.client = client
        self.aggregations = tuple(StreamAggregation(d, prefix) for d in declarations)

    def _additions(self, agg: StreamAggregation, events: Columns) -> list[Command]:
        """One ZADD per entity of `events`, with every member of that entity."""
        decl = agg.declaration
        entities = np.asarray(events[decl.entity_key], dtype=np.int64)
        if len(entities) == 0:
            return []
        by_entity = np.argsort(entities, kind="stable")
        entities = entities[by_entity]
        times = np.asarray(events[decl.event_time], dtype=np.int64)[by_entity]
        orders = np.asarray(events[decl.order_key], dtype=np.int64)[by_entity]
        values = {
            name: np.asarray(events[name], dtype=np.float64)[by_entity]
            for name in decl.value_columns
        }
        members = agg.pack(times, orders, values)
        arguments: list[bytes] = [b""] * (2 * len(members))
        arguments[0::2] = [b"%d" % when for when in times.tolist()]
        arguments[1::2] = members
        starts = np.flatnonzero(np.diff(entities, prepend=entities[:1] - 1))
        ends = np.append(starts[1:], len(entities))
        return [
            (b"ZADD", agg.key_bytes(entity), *arguments[2 * start : 2 * end])
            for entity, start, end in zip(
                entities[starts].tolist(), starts.tolist(), ends.tolist(), strict=True
            )
        ]

    def add_labels(self, labels: pd.DataFrame | Columns) -> int:
        """Store label events (keys, tx_datetime, tx_fraud) for the delayed declarations."""
        events = as_columns(labels)
        commands = []
        for agg in self.aggregations:
            if agg.fed_by_labels:
                commands += self._additions(agg, events)
        redis_batch.execute(self.client, commands)
        return len(next(iter(events.values()), ()))

    def score_features(
        self, transactions: pd.DataFrame | Columns, skip: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Add the batch's transactions to the state and compute every window feature.

        One Redis round trip: the additions and the range reads of every entity involved go
        in order in one write (Redis runs them in order, so reads see the batch's own events).
        Rows where `skip` is true are added to the state but not computed (NaN), and their
        entities are not read unless another row needs them: the cheap path of a worker that
        fell behind.
        """
        events = as_columns(transactions)
        wanted = np.ones(len(events["transaction_id"]), bool) if skip is None else ~skip
        commands: list[Command] = []
        plans = []
        for agg in self.aggregations:
            decl = agg.declaration
            if not agg.fed_by_labels:
                commands += self._additions(agg, events)
            times = np.asarray(events[decl.event_time], dtype=np.int64)[wanted]
            if len(times) == 0:
                continue
            delay = decl.delay_days * MICROS_PER_DAY  # members after t - delay are never used
            low = b"(%d" % (int(times.min()) - agg.horizon_micros)
            high = b"%d" % (int(times.max()) - delay)
            entity_of_row = np.asarray(events[decl.entity_key], dtype=np.int64)[wanted]
            entities = np.unique(entity_of_row)
            first_read = len(commands)
            commands += [
                (b"ZRANGEBYSCORE", agg.key_bytes(entity), low, high) for entity in entities.tolist()
            ]
            plans.append((agg, times, entity_of_row, entities, first_read))
        replies = redis_batch.execute(self.client, commands)
        features = {
            agg.declaration.name: np.full((len(wanted), len(agg.declaration.feature_names)), np.nan)
            for agg in self.aggregations
        }
        for agg, times, entity_of_row, entities, first_read in plans:
            decl = agg.declaration
            reads = replies[first_read : first_read + len(entities)]
            features[decl.name][wanted] = agg.compute(
                entity_of_row,
                times,
                np.asarray(events[decl.order_key], dtype=np.int64)[wanted],
                entities,
                b"".join(chain.from_iterable(reads)),
                np.fromiter(map(len, reads), dtype=np.int64, count=len(reads)),
            )
        return features

    def initialize(self, raw: pd.DataFrame, until: datetime, label_delay_days: int) -> int:
        """Load the state a stream starting at `until` needs, from raw transactions.

        Transactions with time < until feed the undelayed declarations; labels that were
        published before `until` (time + delay < until) feed the delayed ones. Only events
        within each declaration's horizon are kept.
        """
        end = until.astimezone(UTC)
        added = 0
        commands: list[Command] = []
        for agg in self.aggregations:
            decl = agg.declaration
            times = raw[decl.event_time]
            horizon = pd.Timedelta(agg.horizon_micros, unit="us")
            if agg.fed_by_labels:
                delay = pd.Timedelta(days=label_delay_days)
                known = (times + delay < end) & (times > end - horizon)
            else:
                known = (times < end) & (times > end - horizon)
            commands += self._additions(agg, as_columns(raw[known]))
            added += int(known.sum())
        redis_batch.execute(self.client, commands)
        logger.info("stream state initialised with %d events up to %s", added, end.isoformat())
        return added
