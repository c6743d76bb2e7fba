"""Streaming window state in Redis, derived from the same declarations as the Spark backfill.

The windows are computed inside Redis, by a Redis Function (`assets/stream_state.lua`, loaded
with `FUNCTION LOAD REPLACE` under a versioned library name, so an upgrade replaces it): a read
returns each window's count and sums, never the events, and costs the same whatever the
entity's history.

**Keys.** Each entity of a declaration has, under the hash tag `{declaration:entity}` (one
Redis Cluster slot per entity):
- `...:e`, a sorted set of its events (score: event time in microseconds; member: event time as
  little-endian int64, order key as big-endian offset binary, value columns as little-endian
  float64). It is what makes writes idempotent: an event goes into the tiles only when its
  member was new to the set, so a replayed event is never counted twice.
- `...:t`, a hash of *top tiles* (by default a day): field = tile number, value = the packed
  count and sums of the tile's events; plus `meta`, the entity's watermark (latest event time
  plus the declaration's delay) and the first tile kept.
- `...:t:<tile>`, one hash per top tile holding its finer tiles (by default the 24 hours and
  the minutes that have events), fields `<level>:<index within the top tile>`.
Tile widths are declared next to the aggregations (`STATE_TILES`, `skewless.aggregation`).

**Exact windows.** For an event at `t`, a window of `w` covers `t - d - w < e <= t - d`
(`skewless.aggregation`). With `U = t - d`, `L = U - w` and `P(x)` the events of x's top tile
up to `x` included:

    window = (top tiles from tile(L) to tile(U) - 1) + P(U) - P(L)

and `P(x)` is the finer tiles of that top tile before x's, level by level, plus the events of
x's finest tile up to `x`, read from the sorted set (with `d = 0`, events at exactly `U` count
only up to the event's own order key, so equal timestamps follow `(event_time, order_key)`). A
top tile with at most `raw_scan_max` events is read from its events directly. A window thus
reads the whole top tiles between its edges (cached for the call) and, per edge, at most
(fan-out - 1) tiles per finer level and the events of one finest tile: with day, hour and
minute tiles, at most 23 + 59 tiles and a minute's events, whatever the history. Counts are
exact (integers in doubles); sums differ from a direct sum by rounding only.

**Removal.** Each write moves the entity's watermark; top tiles (with their finer tiles and
events) that end before `watermark - horizon - allowed lateness` are deleted in the same call,
so memory stops growing once a horizon has passed. Events older than the first tile kept are
dropped on arrival (the worker already sends events later than the allowed lateness to the
dead-letter topic); a window reaching below a tile whose events were removed or dropped is NaN
rather than short.

**Round trips.** One `FCALL` per entity of the batch and declaration, all in one pipelined
write: the call adds the entity's events of the batch, removes what is too old, then computes
the windows of the batch's events that need them, so reads see the batch's own events. A
declaration without delay is fed by transactions; a delayed one (its values include the label)
is fed by label events. Times must lie within 2**53 microseconds of the epoch (years 1685 to
2255): Lua numbers are doubles.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from skewless import redis_batch
from skewless.aggregation import Function, StateTiles, WindowAggregation
from skewless.redis_batch import Command

logger = logging.getLogger(__name__)

MICROS_PER_DAY = 86_400 * 1_000_000
KEY_PREFIX = "skewless:state"
LAYOUT = "t1"
"""Part of every key, with a digest of the tiles: a change of either gets new keys instead of
misreading old ones (the state is then loaded again, `skewless materialize`)."""
LIBRARY = Path(__file__).parent / "assets" / "stream_state.lua"
FUNCTION = b"skewless_state_v1"
"""The function's name, versioned with its library: a new version loads next to the old."""
DEFAULT_LATENESS = timedelta(days=7)
MAX_EVENTS_PER_CALL = 5_000
"""An entity's events are added at most this many per call (Redis runs one call at a time)."""
_ORDER_BIAS = np.uint64(1 << 63)
_MAX_MICROS = 1 << 53

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


def _micros(span: timedelta) -> int:
    return span // timedelta(microseconds=1)


@dataclass(frozen=True)
class StreamAggregation:
    """How one declaration is kept in Redis: keys, packed members, the function's arguments."""

    declaration: WindowAggregation
    prefix: str = KEY_PREFIX
    tiles: StateTiles = field(default_factory=StateTiles)
    allowed_lateness: timedelta = DEFAULT_LATENESS
    dtype: np.dtype = field(init=False, repr=False, compare=False)
    config: bytes = field(init=False, repr=False, compare=False)
    """The function's configuration argument: the numbers below as packed doubles."""
    _key_head: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"state prefix {self.prefix!r}: braces would break the hash tags")
        decl = self.declaration
        columns = [("time", "<i8"), ("order", ">u8")]
        columns += [(name, "<f8") for name in decl.value_columns]
        widths = [_micros(width) for width in self.tiles.widths]
        windows = [days * MICROS_PER_DAY for days in decl.windows_days]
        config = [len(widths), *widths, len(windows), *windows, decl.delay_days * MICROS_PER_DAY]
        config += [self.horizon_micros, _micros(self.allowed_lateness), len(decl.value_columns)]
        config.append(self.tiles.raw_scan_max)
        object.__setattr__(self, "dtype", np.dtype(columns))
        object.__setattr__(self, "config", np.asarray(config, dtype="<f8").tobytes())
        tiles = hashlib.blake2s(repr(self.tiles).encode(), digest_size=3).hexdigest()
        head = f"{self.prefix}:{LAYOUT}.{tiles}:{{{decl.name}:"
        object.__setattr__(self, "_key_head", head.encode())

    @property
    def fed_by_labels(self) -> bool:
        """A delayed declaration waits for labels; an undelayed one reads transactions."""
        return self.declaration.delay_days > 0

    @property
    def horizon_micros(self) -> int:
        return self.declaration.horizon.days * MICROS_PER_DAY

    def keys(self, entity_id: int) -> tuple[bytes, bytes]:
        """The entity's events key and tiles key (its per-tile keys extend the latter)."""
        head = b"%s%d}:" % (self._key_head, entity_id)
        return head + b"e", head + b"t"

    def pack(
        self, times: np.ndarray, orders: np.ndarray, values: Mapping[str, np.ndarray]
    ) -> bytes:
        """The events' members, back to back: time, order key and value columns, packed."""
        if len(times) and int(np.abs(times).max()) >= _MAX_MICROS:
            raise ValueError("event times must lie within 2**53 microseconds of the epoch")
        records = np.empty(len(times), dtype=self.dtype)
        records["time"] = times
        records["order"] = orders.astype(np.int64).view(np.uint64) ^ _ORDER_BIAS
        for name in self.declaration.value_columns:
            records[name] = values[name]
        return records.tobytes()

    def call(self, entity_id: int, members: bytes, queries: bytes) -> Command:
        """The FCALL adding `members` to the entity and computing the windows of `queries`."""
        return (FCALL, FUNCTION, b"2", *self.keys(entity_id), self.config, members, queries)

    def features(self, aggregates: np.ndarray) -> np.ndarray:
        """The declaration's features from the function's (count, sums) per window.

        `aggregates` has one row per event, and per window its count then one sum per value
        column. A NaN count (the window reached below what the state keeps) gives NaN features.
        """
        decl = self.declaration
        width = 1 + len(decl.value_columns)
        result = np.empty((len(aggregates), len(decl.feature_names)))
        column = 0
        for window in range(len(decl.windows_days)):
            count = aggregates[:, window * width]
            for output in decl.outputs:
                if output.function is Function.COUNT:
                    result[:, column] = count
                else:
                    assert output.column is not None
                    at = window * width + 1 + decl.value_columns.index(output.column)
                    sums = aggregates[:, at]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        means = np.where(count > 0, sums / np.maximum(count, 1), output.empty_value)
                    result[:, column] = np.where(np.isnan(count), np.nan, means)
                column += 1
        return result


FCALL = b"FCALL"


class StreamState:
    """All declarations' streaming state in one Redis, one pipelined write per batch."""

    def __init__(
        self,
        client: redis.Redis,
        declarations: Sequence[WindowAggregation],
        prefix: str = KEY_PREFIX,
        tiles: StateTiles | None = None,
        allowed_lateness: timedelta = DEFAULT_LATENESS,
    ) -> None:
        self.client = client
        self.aggregations = tuple(
            StreamAggregation(d, prefix, tiles or StateTiles(), allowed_lateness)
            for d in declarations
        )
        self._loaded = False

    def load_function(self) -> None:
        """Load (or replace) the state's Redis Function library."""
        self.client.function_load(LIBRARY.read_text(), replace=True)
        self._loaded = True

    def _execute(self, commands: list[Command]) -> list:
        """Run the calls; a Redis that lost the function (restarted empty) gets it again."""
        if not self._loaded:
            self.load_function()
        try:
            return redis_batch.execute(self.client, commands)
        except redis.ResponseError as error:
            if "function not found" not in str(error).lower():
                raise
            logger.warning("the state's Redis Function was missing: loading it again")
            self.load_function()
            return redis_batch.execute(self.client, commands)

    def _calls(
        self, agg: StreamAggregation, events: Columns | None, queries: Columns | None
    ) -> tuple[list[Command], np.ndarray, np.ndarray]:
        """One call per entity (more for one with very many events) adding its `events` and
        computing its `queries`; with the query rows in the order the replies give them and
        the number of queries of each call."""
        decl = agg.declaration
        parts: dict[int, list[tuple[int, bytes, bytes]]] = {}
        rows_of: dict[int, np.ndarray] = {}
        size = agg.dtype.itemsize
        if events is not None and len(events[decl.entity_key]):
            entities = np.asarray(events[decl.entity_key], dtype=np.int64)
            by_entity = np.argsort(entities, kind="stable")
            packed = agg.pack(
                np.asarray(events[decl.event_time], dtype=np.int64)[by_entity],
                np.asarray(events[decl.order_key], dtype=np.int64)[by_entity],
                {c: np.asarray(events[c], dtype=np.float64)[by_entity] for c in decl.value_columns},
            )
            for entity, start, end in _runs(entities[by_entity]):
                for first in range(start, end, MAX_EVENTS_PER_CALL):
                    last = min(end, first + MAX_EVENTS_PER_CALL)
                    members = packed[first * size : last * size]
                    parts.setdefault(entity, []).append((0, members, b""))
        if queries is not None and len(queries[decl.entity_key]):
            entities = np.asarray(queries[decl.entity_key], dtype=np.int64)
            by_entity = np.argsort(entities, kind="stable")
            records = np.empty(len(entities), dtype=[("time", "<i8"), ("order", ">u8")])
            records["time"] = np.asarray(queries[decl.event_time], dtype=np.int64)[by_entity]
            orders = np.asarray(queries[decl.order_key], dtype=np.int64)[by_entity]
            records["order"] = orders.view(np.uint64) ^ _ORDER_BIAS
            packed = records.tobytes()
            for entity, start, end in _runs(entities[by_entity]):
                rows_of[entity] = by_entity[start:end]
                calls = parts.setdefault(entity, [(0, b"", b"")])
                calls[-1] = (end - start, calls[-1][1], packed[16 * start : 16 * end])
        commands, rows, counts = [], [], []
        for entity, calls in parts.items():
            for count, members, asked in calls:
                commands.append(agg.call(entity, members, asked))
                counts.append(count)
            if entity in rows_of:
                rows.append(rows_of[entity])
        order = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        return commands, order, np.asarray(counts, dtype=np.int64)

    def add_labels(self, labels: pd.DataFrame | Columns) -> int:
        """Store label events (keys, tx_datetime, tx_fraud) for the delayed declarations."""
        events = as_columns(labels)
        commands = []
        for agg in self.aggregations:
            if agg.fed_by_labels:
                commands += self._calls(agg, events, None)[0]
        self._execute(commands)
        return len(next(iter(events.values()), ()))

    def score_features(
        self, transactions: pd.DataFrame | Columns, skip: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Add the batch's transactions to the state and compute every window feature.

        One round trip: one call per entity and declaration, in one write. Rows where `skip`
        is true are added to the state but not computed (NaN), and their entities' windows are
        not read unless another row needs them: the cheap path of a worker that fell behind.
        """
        events = as_columns(transactions)
        wanted = np.ones(len(events["transaction_id"]), bool) if skip is None else ~skip
        asked = {name: np.asarray(column)[wanted] for name, column in events.items()}
        commands: list[Command] = []
        plans = []
        for agg in self.aggregations:
            calls, rows, counts = self._calls(agg, None if agg.fed_by_labels else events, asked)
            plans.append((agg, len(commands), rows, counts))
            commands += calls
        replies = self._execute(commands)
        features = {
            agg.declaration.name: np.full((len(wanted), len(agg.declaration.feature_names)), np.nan)
            for agg in self.aggregations
        }
        for agg, first, rows, counts in plans:
            mine = replies[first : first + len(counts)]
            blob = b"".join(reply[1] for reply in mine)
            width = len(agg.declaration.windows_days) * (1 + len(agg.declaration.value_columns))
            aggregates = np.frombuffer(blob, dtype="<f8").reshape(-1, width)
            computed = np.empty_like(aggregates)
            computed[rows] = aggregates
            features[agg.declaration.name][wanted] = agg.features(computed)
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
            ordered = raw[known].sort_values([decl.event_time, decl.order_key], kind="stable")
            commands += self._calls(agg, as_columns(ordered), None)[0]
            added += int(known.sum())
        self._execute(commands)
        logger.info("stream state initialised with %d events up to %s", added, end.isoformat())
        return added


def _runs(sorted_keys: np.ndarray) -> list[tuple[int, int, int]]:
    """(key, start, end) of each run of equal keys in `sorted_keys`."""
    starts = np.flatnonzero(np.diff(sorted_keys, prepend=sorted_keys[:1] - 1))
    ends = np.append(starts[1:], len(sorted_keys))
    return list(zip(sorted_keys[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))
