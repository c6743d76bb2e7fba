"""Streaming window state in Redis, derived from the same declarations as the Spark backfill.

Each entity of a declaration keeps its recent events in a Redis sorted set (score: event time
in microseconds; member: event time, order key and value columns packed as little-endian
bytes). A declaration without delay is fed by transactions; a delayed one (its values include
the label) is fed by label events. Features are computed from the members with exactly the
semantics of `skewless.aggregation`: for an event at `t`, members with
`t - d - w < e <= t - d`, and with `d = 0` only members at or before the event in
(event time, order key) order. Members are idempotent (a replayed event re-adds the same
bytes), so at-least-once delivery never double counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import redis

from skewless.aggregation import Function, WindowAggregation

logger = logging.getLogger(__name__)

MICROS_PER_DAY = 86_400 * 1_000_000
KEY_PREFIX = "skewless:state"
_ENTITY_SHIFT = 1 << 44
"""Room for event times within one batch's key space: 2^44 us is about 203 days."""


def to_micros(times: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of a UTC datetime column."""
    return pd.to_datetime(times, utc=True).to_numpy(dtype="datetime64[us]").astype(np.int64)


@dataclass(frozen=True)
class StreamAggregation:
    """How one declaration is kept in Redis and computed from its members."""

    declaration: WindowAggregation
    prefix: str = KEY_PREFIX
    dtype: np.dtype = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        columns = [("time", "<i8"), ("order", "<i8")]
        columns += [(name, "<f8") for name in self.declaration.value_columns]
        object.__setattr__(self, "dtype", np.dtype(columns))

    @property
    def fed_by_labels(self) -> bool:
        """A delayed declaration waits for labels; an undelayed one reads transactions."""
        return self.declaration.delay_days > 0

    @property
    def horizon_micros(self) -> int:
        return self.declaration.horizon.days * MICROS_PER_DAY

    def key(self, entity_id: int) -> str:
        return f"{self.prefix}:{self.declaration.name}:{entity_id}"

    def pack(self, times: np.ndarray, orders: np.ndarray, values: pd.DataFrame) -> list[bytes]:
        """One member per event: its time, order key and value columns as packed bytes."""
        records = np.empty(len(times), dtype=self.dtype)
        records["time"] = times
        records["order"] = orders
        for name in self.declaration.value_columns:
            records[name] = values[name].to_numpy(dtype=np.float64)
        size = self.dtype.itemsize
        raw = records.tobytes()
        return [raw[i : i + size] for i in range(0, len(raw), size)]

    def unpack(self, members: Sequence[bytes]) -> np.ndarray:
        """The members of one entity as a structured array."""
        return np.frombuffer(b"".join(members), dtype=self.dtype)

    def compute(
        self,
        event_entities: np.ndarray,
        event_times: np.ndarray,
        event_orders: np.ndarray,
        members: dict[int, np.ndarray],
    ) -> np.ndarray:
        """The declaration's features for each event, from its entity's members.

        Vectorised over the batch: members of all entities are laid out in one array sorted
        by (entity, time, order), and each window bound is one `searchsorted`.
        """
        decl = self.declaration
        n_events = len(event_times)
        result = np.zeros((n_events, len(decl.feature_names)))
        if n_events == 0:
            return result
        entity_ids = np.unique(event_entities)
        slot = {int(entity): index for index, entity in enumerate(entity_ids)}
        parts = [members.get(int(entity), np.empty(0, self.dtype)) for entity in entity_ids]
        counts = np.array([len(part) for part in parts])
        stacked = np.concatenate(parts) if parts else np.empty(0, self.dtype)
        owner = np.repeat(np.arange(len(entity_ids)), counts)
        order = np.lexsort((stacked["order"], stacked["time"], owner))
        stacked, owner = stacked[order], owner[order]
        base = int(event_times.min()) - self.horizon_micros - 1
        if len(stacked):
            base = min(base, int(stacked["time"].min()) - 1)
        span = max(int(event_times.max()), int(stacked["time"].max()) if len(stacked) else 0)
        if span - base >= _ENTITY_SHIFT:
            raise ValueError("a batch spans more event time than the state can index; split it")
        keys = owner * _ENTITY_SHIFT + (stacked["time"] - base)
        event_slot = np.array([slot[int(entity)] for entity in event_entities])
        event_base = event_slot * _ENTITY_SHIFT - base
        delay = decl.delay_days * MICROS_PER_DAY
        if decl.delay_days == 0:
            upper = self._position_of_events(stacked, owner, event_slot, event_orders) + 1
        else:
            upper = np.searchsorted(keys, event_base + event_times - delay, side="right")
        prefix_sums = {
            name: np.concatenate([[0.0], np.cumsum(stacked[name])]) for name in decl.value_columns
        }
        column = 0
        for days in decl.windows_days:
            lower_key = event_base + event_times - delay - days * MICROS_PER_DAY
            lower = np.searchsorted(keys, lower_key, side="right")
            lower = np.minimum(lower, upper)
            count = upper - lower
            for output in decl.outputs:
                if output.function is Function.COUNT:
                    result[:, column] = count
                else:
                    assert output.column is not None
                    sums = prefix_sums[output.column][upper] - prefix_sums[output.column][lower]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        result[:, column] = np.where(
                            count > 0, sums / np.maximum(count, 1), output.empty_value
                        )
                column += 1
        return result

    @staticmethod
    def _position_of_events(
        stacked: np.ndarray, owner: np.ndarray, event_slot: np.ndarray, event_orders: np.ndarray
    ) -> np.ndarray:
        """Index of each event's own member (the event is in the state before it is scored)."""
        lookup = pd.Index(owner.astype(np.int64) * (1 << 32) + stacked["order"])
        wanted = event_slot.astype(np.int64) * (1 << 32) + event_orders
        positions = lookup.get_indexer(wanted)
        if (positions < 0).any():
            raise KeyError("an event being scored is missing from its entity's state")
        return np.asarray(positions)


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

    def _add(
        self, pipe: redis.client.Pipeline, agg: StreamAggregation, frame: pd.DataFrame
    ) -> None:
        decl = agg.declaration
        times = to_micros(frame[decl.event_time])
        members = agg.pack(times, frame[decl.order_key].to_numpy(np.int64), frame)
        grouped: dict[int, dict[bytes, float]] = {}
        for entity, member, when in zip(
            frame[decl.entity_key].to_numpy(np.int64), members, times, strict=True
        ):
            grouped.setdefault(int(entity), {})[member] = float(when)
        for entity, mapping in grouped.items():
            pipe.zadd(agg.key(entity), mapping)

    def add_labels(self, labels: pd.DataFrame) -> int:
        """Store label events (keys, tx_datetime, tx_fraud) for the delayed declarations."""
        with self.client.pipeline(transaction=False) as pipe:
            for agg in self.aggregations:
                if agg.fed_by_labels:
                    self._add(pipe, agg, labels)
            pipe.execute()
        return len(labels)

    def score_features(self, transactions: pd.DataFrame) -> dict[str, np.ndarray]:
        """Add the batch's transactions to the state and compute every window feature.

        One Redis round trip: the additions and the range reads of every entity involved go
        in one pipeline (Redis runs them in order, so reads see the batch's own events).
        """
        plans = []
        with self.client.pipeline(transaction=False) as pipe:
            for agg in self.aggregations:
                decl = agg.declaration
                if not agg.fed_by_labels:
                    self._add(pipe, agg, transactions)
                times = to_micros(transactions[decl.event_time])
                low = int(times.min()) - agg.horizon_micros
                high = int(times.max())
                entities = np.unique(transactions[decl.entity_key].to_numpy(np.int64))
                for entity in entities:
                    pipe.zrangebyscore(agg.key(int(entity)), f"({low}", high)
                plans.append((agg, times, entities))
            replies = iter(pipe.execute())
        features: dict[str, np.ndarray] = {}
        for agg, times, entities in plans:
            decl = agg.declaration
            members = {}
            for entity in entities:
                reply = next(replies)
                while isinstance(reply, int):  # the ZADD replies that precede the reads
                    reply = next(replies)
                members[int(entity)] = agg.unpack(reply)
            features[decl.name] = agg.compute(
                transactions[decl.entity_key].to_numpy(np.int64),
                times,
                transactions[decl.order_key].to_numpy(np.int64),
                members,
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
        with self.client.pipeline(transaction=False) as pipe:
            for agg in self.aggregations:
                decl = agg.declaration
                times = raw[decl.event_time]
                horizon = pd.Timedelta(agg.horizon_micros, unit="us")
                if agg.fed_by_labels:
                    delay = pd.Timedelta(days=label_delay_days)
                    known = (times + delay < end) & (times > end - horizon)
                else:
                    known = (times < end) & (times > end - horizon)
                self._add(pipe, agg, raw[known])
                added += int(known.sum())
            pipe.execute()
        logger.info("stream state initialised with %d events up to %s", added, end.isoformat())
        return added
