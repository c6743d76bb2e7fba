"""Streaming window state in Redis, derived from the same declarations as the Spark backfill.

The windows are computed inside Redis, by a Redis Function (`assets/stream_state.lua`, loaded
with `FUNCTION LOAD REPLACE` under a versioned library name, so an upgrade replaces it): a read
returns each window's count and sums, never the events, and its cost does not grow with the
entity's history.

**Keys.** Each entity of a declaration has, under the hash tag `{declaration:entity}` (one
Redis Cluster slot per entity; the key head also carries a digest of the tiles and of the
declaration's value unit, so changed tiles or decimals get new keys):
- `...:e`, a sorted set of its events (score: event time in microseconds; member: event time as
  little-endian int64, order key as big-endian offset binary, value columns in whole units as
  little-endian float64).
- `...:i`, a hash from order key (transaction id, 8 bytes) to the member counted for it:
  what makes writes idempotent *by identity*. An event whose member is already there changes
  nothing (a replay is never counted twice); one with the same id and another member (a
  re-sent transaction with a new amount or time, a corrected label) replaces it: the old
  member leaves the events and the tiles (with its day's sub-tiles built again from the
  events), the new one comes in.
- for a delayed declaration (labels), `...:k`, a sorted set of the transactions its entity
  was sent (member: order key, score: time): a label counts at the time of the transaction it
  names, and only for a transaction of this set. A label for one not there (yet) waits in
  `...:p` (a sorted set of waiting members by claimed time; in the index as `p` + member)
  and is counted when the transaction comes; one still waiting once older than the tiles kept
  is removed and returned as refused (`StreamState.take_refused`).
- `...:t`, a hash: `days`, the entity's *top tiles* (by default days) as one packed array of
  running aggregates (entry i: count and sums of the top tiles from the first kept to it), and
  `meta`: the watermark, the first top tile kept, and the time of the latest event ever
  removed or dropped.
- `...:a`, a hash of sub-tile arrays (absent until needed): for a top tile holding more than
  `raw_scan_max` events, field `<tile>/1:0` is the packed array of its sub-tiles one level
  finer (by default its 24 hours), and for each of those holding more than `raw_scan_max`
  events a field `<tile>/2:<index>` the array of its own sub-tiles (its 60 minutes). Such
  arrays are built from the events when their tile goes over the limit, then kept up.
These six keys are every key a call touches for the entity, and the call names them all.
Tile widths and the limit are declared next to the aggregations (`STATE_TILES`).

**Exact windows.** For an event at `t`, a window of `w` covers `t - d - w < e <= t - d`
(`skewless.aggregation`). With `S(x)` the events up to `x` included (from the first kept
tile), `U = t - d` and `L = U - w`, the window is `S(U) - S(L)`, and

    S(x) = running aggregate of the top tile before x's + P(x)

where `P(x)`, the events of x's top tile up to `x`, is read level by level: the sub-tiles of
the parent before x's sub-tile (or, when fewer, the parent minus its sub-tiles from x's on),
then x's sub-tile becomes the parent; a parent with at most `raw_scan_max` events is read from
the sorted set, up to `x`. With `d = 0`, events at exactly `U` count only up to the event's own
order key, so equal timestamps follow `(event_time, order_key)`. A window thus costs two
entries of the top array and, per edge, at most half a parent's sub-tiles per level plus the
events of one small tile: with day, hour and minute tiles, at most 12 + 30 tiles and 16
events (or a minute's events), whatever the history. Counts are exact (integers in doubles),
and so are sums: members carry values in whole units of the declaration's `decimals`
(`skewless.aggregation`). So a window's sum does not depend on what else the state holds or
held, and an event scored again after the state moved on gets the same bits.

**Removal.** The entity's watermark is the latest time it was computed at, or, for a
declaration without delay, the latest event added (labels do not move it: a worker may read
them days ahead of the transactions it scores). Top tiles (with their sub-tiles and events)
that end before `watermark - horizon - allowed lateness` are deleted in the call that moves
it (with their index entries, known transactions and waiting labels), so memory stops
growing once a horizon has passed: a later event at `t` is at most the
allowed lateness behind the watermark and needs nothing before `t - horizon`. Events older
than the first tile kept are dropped on arrival (the worker already sends events later than
the allowed lateness to the dead-letter topic); a window that would hold an event removed or
dropped is NaN rather than short. Loading the state for a stream starting at `until`
(`initialize`) removes the declarations' keys first and sets the watermark of the entities it
loads to `until`: a replay of an earlier period over a state that went further gets every
event after `until - horizon` again, and windows from `until` on are complete, also for the
entities that had no event in the load.

**Round trips.** One pipelined write per batch: per declaration, `FCALL`s of up to
`MAX_ENTITIES_PER_CALL` entities each. In a Redis Cluster a call holds the entities of one slot
only (every key of an entity is in its slot, and a call declares all the keys it touches), so
the calls are ordered by slot then entity and split where the slot changes; `redis_batch` sends
each node its calls in one write, all nodes at once. For each entity the call adds its events of the
batch, removes what is too old, then computes the windows of the batch's events that need
them, so reads see the batch's own events. A declaration without delay is fed by
transactions; a delayed one (its values include the label) is fed by label events. Times must
lie within 2**53 microseconds of the epoch (years 1685 to 2255): Lua numbers are doubles.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from redis.crc import key_slot

from skewless import redis_batch
from skewless.aggregation import Function, StateTiles, WindowAggregation
from skewless.redis_batch import Client, Command

logger = logging.getLogger(__name__)

MICROS_PER_DAY = 86_400 * 1_000_000
KEY_PREFIX = "skewless:state"
LAYOUT = "t2"
"""Part of every key, with a digest of the tiles: a change of either gets new keys instead of
misreading old ones (the state is then loaded again, `skewless materialize`)."""
LIBRARY = Path(__file__).parent / "assets" / "stream_state.lua"
FUNCTION = b"skewless_state_v2"
"""The function's name, versioned with its library: a new version loads next to the old."""
DEFAULT_LATENESS = timedelta(days=7)
MAX_EVENTS_PER_CALL = 5_000
"""Events added by one call at most (Redis runs one call at a time: others wait meanwhile)."""
MAX_ENTITIES_PER_CALL = 200
"""Entities of one call at most."""
_ORDER_BIAS = np.uint64(1 << 63)
_MAX_MICROS = 1 << 53

Columns = Mapping[str, np.ndarray]
"""A batch of events as one array per column; event times as int64 microseconds (UTC)."""
Part = tuple[int, bytes, bytes, bytes]
"""One entity's share of a call: entity id, packed members, queries and known transactions."""


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
    _config_head: bytes = field(init=False, repr=False, compare=False)
    key_layout: KeyLayout = field(init=False, repr=False, compare=False)
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
        object.__setattr__(self, "_config_head", np.asarray(config, dtype="<f8").tobytes())
        object.__setattr__(self, "config", self._config_head + struct.pack("<d", -math.inf))
        layout = repr((self.tiles, decl.decimals)).encode()
        digest = hashlib.blake2s(layout, digest_size=3).hexdigest()
        object.__setattr__(self, "key_layout", KeyLayout(self.prefix, LAYOUT, digest, decl.name))
        object.__setattr__(self, "_key_head", self.key_layout.head)

    @property
    def fed_by_labels(self) -> bool:
        """A delayed declaration waits for labels; an undelayed one reads transactions."""
        return self.declaration.delay_days > 0

    @property
    def horizon_micros(self) -> int:
        return self.declaration.horizon.days * MICROS_PER_DAY

    @property
    def key_head(self) -> bytes:
        """What every key of the declaration (in this layout) starts with."""
        return self._key_head

    def keys(self, entity_id: int) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
        """The entity's events, tiles, sub-tile arrays, index, known transactions and waiting
        labels keys: every key of the entity."""
        head = b"%s%d}:" % (self._key_head, entity_id)
        return head + b"e", head + b"t", head + b"a", head + b"i", head + b"k", head + b"p"

    def slot(self, entity_id: int) -> int:
        """The Redis Cluster slot of every key of the entity (its hash tag's)."""
        return key_slot(self.keys(entity_id)[0])

    def slots(self, entity_ids: np.ndarray) -> np.ndarray:
        """The slot of each entity of `entity_ids`."""
        unique, inverse = np.unique(entity_ids, return_inverse=True)
        slots = np.fromiter(map(self.slot, unique.tolist()), dtype=np.int64, count=len(unique))
        return slots[inverse]

    def pack(
        self, times: np.ndarray, orders: np.ndarray, values: Mapping[str, np.ndarray]
    ) -> bytes:
        """The events' members, back to back: time, order key and value columns (in whole
        units), packed."""
        if len(times) and int(np.abs(times).max()) >= _MAX_MICROS:
            raise ValueError("event times must lie within 2**53 microseconds of the epoch")
        records = np.empty(len(times), dtype=self.dtype)
        records["time"] = times
        records["order"] = orders.astype(np.int64).view(np.uint64) ^ _ORDER_BIAS
        scale = self.declaration.unit_scale
        with np.errstate(over="ignore"):  # (a value too large for its units gives inf sums)
            for name in self.declaration.value_columns:
                records[name] = np.rint(values[name] * scale)
        return records.tobytes()

    def call(self, parts: Sequence[Part], until: int | None = None) -> Command:
        """One FCALL registering each (entity, members, queries, known)'s known transactions,
        adding its members and computing the windows of its queries, in that order. With
        `until` (microseconds), the members are the load for a stream starting then: the
        entity's watermark goes to `until` even if it was later (a replay of an earlier period
        over a state that went further)."""
        keys = [key for entity, *_ in parts for key in self.keys(entity)]
        arguments = [blob for _, *blobs in parts for blob in blobs]
        config = self.config if until is None else self._config_head + struct.pack("<d", until)
        return (FCALL, FUNCTION, b"%d" % len(keys), *keys, config, *arguments)

    def features(self, aggregates: np.ndarray) -> np.ndarray:
        """The declaration's features from the function's (count, sums) per window.

        `aggregates` has one row per event, and per window its count then one sum per value
        column (in whole units). A NaN count (the window reached below what the state keeps)
        gives NaN features.
        """
        decl = self.declaration
        scale = decl.unit_scale
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
                        means = np.where(
                            count > 0, sums / scale / np.maximum(count, 1), output.empty_value
                        )
                    result[:, column] = np.where(np.isnan(count), np.nan, means)
                column += 1
        return result


FCALL = b"FCALL"


@dataclass(frozen=True)
class RefusedEvent:
    """A label the state refused: no transaction of its id was known to its entity in time."""

    declaration: str
    entity_id: int
    transaction_id: int
    event_time: int
    """Microseconds since the epoch (the transaction time the label claimed)."""
    values: dict[str, float]


START_CHECK_BUDGET_S = 2.0
"""Time one look for a state's keys may take at start-up (a `SCAN`)."""


@dataclass(frozen=True)
class EmptyState:
    """A declaration whose state has no key in this layout: a state never loaded, or loaded
    in another layout (an older version's, other tiles or decimals), whose keys are not read."""

    name: str
    head: bytes
    """What every key of the declaration in this layout starts with."""
    other_layout_key: bytes | None
    """A key of the declaration in another layout, when one was found."""

    def message(self) -> str:
        said = (
            f"the state of {self.name} has no key under {self.head.decode()!r}: its values "
            "start empty, from the events this process sees, until `skewless materialize` "
            "loads it"
        )
        if self.other_layout_key is not None:
            said += (
                f"; keys of another layout are there ({self.other_layout_key!r}), "
                "which this version does not read: the state's layout changed with the version "
                "of skewless or with the declaration (`skewless materialize "
                "--remove-other-layouts` removes them once no worker of the old layout runs)"
            )
        return said


@dataclass(frozen=True)
class KeyLayout:
    """Where one declaration's keys live: `<prefix>:<layout>.<digest>:{<name>:<entity>}:` then
    the key's own part. `layout` is the kind of state and its version (`t2`: the window state's
    second layout, `h1` a history's first) and `digest` what its keys depend on (tiles and
    decimals, or the history's declaration): a change of either gets new keys."""

    prefix: str
    layout: str
    digest: str
    name: str

    @property
    def head(self) -> bytes:
        """What every key of the declaration in this layout starts with."""
        return f"{self.prefix}:{self.layout}.{self.digest}:{{{self.name}:".encode()

    def _any_version(self) -> tuple[bytes, re.Pattern[bytes]]:
        """A `SCAN MATCH` pattern and the whole shape of the declaration's keys in any layout of
        this kind (any version, any digest) under the prefix."""
        kind = f"{self.prefix}:{self.layout.rstrip('0123456789')}".encode()
        tag = f"{{{self.name}:".encode()
        pattern = redis_batch.glob_escaped(kind) + b"*" + redis_batch.glob_escaped(tag) + b"*"
        shape = re.compile(re.escape(kind) + rb"\d+\.[^:{}]+:" + re.escape(tag) + rb"-?\d+\}:.+")
        return pattern, shape

    def empty(self, client: Client, budget_s: float = START_CHECK_BUDGET_S) -> EmptyState | None:
        """`EmptyState` when no key of this layout is there, naming a key of another layout when
        one is; None when a key is there, or when the look ran out of time."""
        head = self.head
        key, sure = redis_batch.first_key(client, redis_batch.glob_escaped(head) + b"*", budget_s)
        if key is not None or not sure:
            return None
        pattern, shape = self._any_version()
        other, _ = redis_batch.first_key(client, pattern, budget_s, unless_under=head, shape=shape)
        return EmptyState(self.name, head, other)

    def remove_other_layouts(self, client: Client) -> int:
        """Unlink the declaration's keys in every other layout of this kind; returns how many."""
        pattern, shape = self._any_version()
        removed = redis_batch.remove_keys(client, pattern, unless_under=self.head, shape=shape)
        if removed:
            logger.info("removed %d keys of %s in other layouts", removed, self.name)
        return removed


class StreamState:
    """All declarations' streaming state in one Redis or one Redis Cluster, one pipelined
    write per batch."""

    def __init__(
        self,
        client: Client,
        declarations: Sequence[WindowAggregation],
        prefix: str = KEY_PREFIX,
        tiles: StateTiles | None = None,
        allowed_lateness: timedelta = DEFAULT_LATENESS,
    ) -> None:
        self.client = client
        self._refused: list[RefusedEvent] = []
        self.aggregations = tuple(
            StreamAggregation(d, prefix, tiles or StateTiles(), allowed_lateness)
            for d in declarations
        )
        self._library = redis_batch.FunctionLibrary(LIBRARY)
        self._by_slot = isinstance(client, redis.RedisCluster)
        """Calls hold one slot's entities only: a cluster refuses keys of several slots."""

    def empty(self) -> list[EmptyState]:
        """The declarations whose state has no key in this layout (a look at start-up)."""
        found = (agg.key_layout.empty(self.client) for agg in self.aggregations)
        return [state for state in found if state is not None]

    def remove_other_layouts(self) -> int:
        """Unlink the declarations' keys of other layouts (an older version's, other tiles or
        decimals), which this version never reads; returns how many. A worker still running an
        older version reads them: remove them once none does."""
        return sum(agg.key_layout.remove_other_layouts(self.client) for agg in self.aggregations)

    def load_function(self) -> None:
        """Load (or replace) the state's Redis Function library."""
        self._library.load(self.client)

    def _execute(self, commands: list[Command]) -> list:
        """Run the calls; a Redis that lost the function (restarted empty) gets it again."""
        return self._library.execute(self.client, commands)

    def _call_order(self, agg: StreamAggregation, entities: np.ndarray) -> np.ndarray:
        """The stable permutation putting rows in call order: by entity, or in a cluster by
        slot then entity."""
        if not self._by_slot:
            return np.argsort(entities, kind="stable")
        return np.lexsort((entities, agg.slots(entities)))

    def _calls(
        self,
        agg: StreamAggregation,
        events: Columns | None,
        queries: Columns | None,
        until: int | None = None,
        known: Columns | None = None,
    ) -> tuple[list[Command], np.ndarray, list[list[int]]]:
        """Calls registering the `known` transactions (a delayed declaration's), adding
        `events` and computing `queries`, entity by entity (in call order, an entity with very
        many events over several calls); with the query rows in the order of the replies'
        results, and each call's entities."""
        decl = agg.declaration
        parts: dict[int, list[tuple[bytes, bytes, bytes]]] = {}
        rows: list[np.ndarray] = []
        size = agg.dtype.itemsize
        if events is not None and len(events[decl.entity_key]):
            entities = np.asarray(events[decl.entity_key], dtype=np.int64)
            by_entity = self._call_order(agg, entities)
            packed = agg.pack(
                np.asarray(events[decl.event_time], dtype=np.int64)[by_entity],
                np.asarray(events[decl.order_key], dtype=np.int64)[by_entity],
                {c: np.asarray(events[c], dtype=np.float64)[by_entity] for c in decl.value_columns},
            )
            for entity, start, end in _runs(entities[by_entity]):
                parts[entity] = [
                    (packed[first * size : min(end, first + MAX_EVENTS_PER_CALL) * size], b"", b"")
                    for first in range(start, end, MAX_EVENTS_PER_CALL)
                ]
        if known is not None and len(known[decl.entity_key]):
            step = 16 * MAX_EVENTS_PER_CALL
            for entity, packed in _moments(known, decl):
                chunks = [(b"", b"", packed[at : at + step]) for at in range(0, len(packed), step)]
                parts[entity] = chunks + parts.get(entity, [])  # registered before any member
        if queries is not None and len(queries[decl.entity_key]):
            for entity, packed in _moments(queries, decl):
                calls = parts.setdefault(entity, [(b"", b"", b"")])
                calls[-1] = (calls[-1][0], packed, calls[-1][2])
            entities = np.asarray(queries[decl.entity_key], dtype=np.int64)
            by_entity = self._call_order(agg, entities)
        commands: list[Command] = []
        call_entities: list[list[int]] = []
        group: list[Part] = []
        events_in_group = 0
        group_slot = -1
        if self._by_slot:
            slot_of = {entity: agg.slot(entity) for entity in parts}
            ordered = sorted(parts, key=lambda entity: (slot_of[entity], entity))
        else:
            ordered = sorted(parts)
        for entity in ordered:
            slot = slot_of[entity] if self._by_slot else -1
            for members, asked, registered in parts[entity]:
                if group and (
                    len(group) >= MAX_ENTITIES_PER_CALL
                    or events_in_group + len(members) // size + len(registered) // 16
                    > MAX_EVENTS_PER_CALL
                    or slot != group_slot
                ):
                    commands.append(agg.call(group, until))
                    call_entities.append([part[0] for part in group])
                    group, events_in_group = [], 0
                group.append((entity, members, asked, registered))
                events_in_group += len(members) // size + len(registered) // 16
                group_slot = slot
        if group:
            commands.append(agg.call(group, until))
            call_entities.append([part[0] for part in group])
        if queries is not None and len(queries[decl.entity_key]):
            rows = [by_entity]  # entities in call order, each entity's rows in their order
        order = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        return commands, order, call_entities

    def _note_refused(
        self, agg: StreamAggregation, replies: Sequence, call_entities: list[list[int]]
    ) -> None:
        """Keep the labels the calls refused (see `take_refused`)."""
        size = 8 + agg.dtype.itemsize
        scale = agg.declaration.unit_scale
        for reply, entities in zip(replies, call_entities, strict=True):
            blob = reply[2]
            for at in range(0, len(blob), size):
                position = int(struct.unpack_from("<d", blob, at)[0])
                record = np.frombuffer(blob, agg.dtype, 1, at + 8)[0]
                values = {n: float(record[n]) / scale for n in agg.declaration.value_columns}
                self._refused.append(
                    RefusedEvent(
                        agg.declaration.name,
                        entities[position],
                        int(np.uint64(record["order"]) ^ _ORDER_BIAS),
                        int(record["time"]),
                        values,
                    )
                )

    def take_refused(self) -> list[RefusedEvent]:
        """The labels refused since the last call, and forget them: a label whose transaction
        its entity did not know by the time the label was older than the state keeps (horizon
        plus allowed lateness behind the entity's watermark)."""
        refused, self._refused = self._refused, []
        return refused

    def add_labels(self, labels: pd.DataFrame | Columns) -> int:
        """Store label events (keys, transaction id, tx_datetime, tx_fraud) for the delayed
        declarations.

        A label counts for the transaction it names, at that transaction's time, and replaces
        the label received for it before. A label whose transaction its entity does not know
        yet (a worker may read labels ahead of the transactions) waits for it in the state; one
        still waiting when it is older than the state keeps is refused (`take_refused`).
        """
        events = as_columns(labels)
        plans = [(a, *self._calls(a, events, None)) for a in self.aggregations if a.fed_by_labels]
        replies = self._execute([command for _, commands, _, _ in plans for command in commands])
        for agg, commands, _, call_entities in plans:
            self._note_refused(agg, replies[: len(commands)], call_entities)
            replies = replies[len(commands) :]
        return len(next(iter(events.values()), ()))

    def score_features(
        self, transactions: pd.DataFrame | Columns, skip: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Add the batch's transactions to the state and compute every window feature.

        One round trip: calls of many entities per declaration, in one write. Rows where `skip`
        is true are added to the state but not computed (NaN), and their entities' windows are
        not read unless another row needs them: the cheap path of a worker that fell behind.
        """
        events = as_columns(transactions)
        wanted = np.ones(len(events["transaction_id"]), bool) if skip is None else ~skip
        asked = {name: np.asarray(column)[wanted] for name, column in events.items()}
        commands: list[Command] = []
        plans = []
        for agg in self.aggregations:
            if agg.fed_by_labels:  # the batch's transactions are what its labels may name
                calls, rows, call_entities = self._calls(agg, None, asked, known=events)
            else:
                calls, rows, call_entities = self._calls(agg, events, asked)
            plans.append((agg, len(commands), len(calls), rows, call_entities))
            commands += calls
        replies = self._execute(commands)
        features = {
            agg.declaration.name: np.full((len(wanted), len(agg.declaration.feature_names)), np.nan)
            for agg in self.aggregations
        }
        for agg, first, count, rows, call_entities in plans:
            mine = replies[first : first + count]
            self._note_refused(agg, mine, call_entities)
            blob = b"".join(reply[1] for reply in mine)
            width = len(agg.declaration.windows_days) * (1 + len(agg.declaration.value_columns))
            aggregates = np.frombuffer(blob, dtype="<f8").reshape(-1, width)
            computed = np.empty_like(aggregates)
            computed[rows] = aggregates
            features[agg.declaration.name][wanted] = agg.features(computed)
        return features

    def initialize(self, raw: pd.DataFrame, until: datetime, label_delay_days: int) -> int:
        """Load the state a stream starting at `until` needs, from raw transactions.

        Every key of the declarations (in this layout) is removed first: the state becomes what
        the stream needs and nothing else, also when it had gone further (a replay from an
        earlier time), where an entity without events in the load would otherwise keep its
        later watermark and serve NaN windows. Transactions with time < until feed the
        undelayed declarations; labels that were published before `until` (time + delay <
        until) feed the delayed ones. Only events within each declaration's horizon are loaded;
        the watermark of every entity loaded becomes `until`.
        """
        end = until.astimezone(UTC)
        removed = sum(
            redis_batch.remove_keys_under(self.client, agg.key_head) for agg in self.aggregations
        )
        added = 0
        commands: list[Command] = []
        plans = []
        for agg in self.aggregations:
            decl = agg.declaration
            times = raw[decl.event_time]
            horizon = pd.Timedelta(agg.horizon_micros, unit="us")
            seen = (times < end) & (times > end - horizon)
            transactions = None
            if agg.fed_by_labels:
                delay = pd.Timedelta(days=label_delay_days)
                loaded = (times + delay < end) & (times > end - horizon)
                transactions = as_columns(raw.loc[seen, [decl.entity_key, decl.event_time,
                                                         decl.order_key]])  # fmt: skip
            else:
                loaded = seen
            ordered = raw[loaded].sort_values([decl.event_time, decl.order_key], kind="stable")
            calls, _, call_entities = self._calls(
                agg, as_columns(ordered), None, _micros_of(end), known=transactions
            )
            plans.append((agg, len(commands), len(calls), call_entities))
            commands += calls
            added += int(loaded.sum())
        replies = self._execute(commands)
        for agg, first, count, call_entities in plans:
            self._note_refused(agg, replies[first : first + count], call_entities)
        logger.info(
            "stream state initialised with %d events up to %s (%d keys removed first)",
            *(added, end.isoformat(), removed),
        )
        for event in self.take_refused():  # (labels that waited in vain, left from a stream)
            logger.warning("a label the state refused (no transaction of its id): %s", event)
        return added


def _micros_of(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _moments(events: Columns, decl: WindowAggregation) -> list[tuple[int, bytes]]:
    """Per entity (ascending), its events' (time, order key) packed as the function reads
    them, in the events' order."""
    entities = np.asarray(events[decl.entity_key], dtype=np.int64)
    by_entity = np.argsort(entities, kind="stable")
    records = np.empty(len(entities), dtype=[("time", "<i8"), ("order", ">u8")])
    records["time"] = np.asarray(events[decl.event_time], dtype=np.int64)[by_entity]
    orders = np.asarray(events[decl.order_key], dtype=np.int64)[by_entity]
    records["order"] = orders.view(np.uint64) ^ _ORDER_BIAS
    packed = records.tobytes()
    return [
        (entity, packed[16 * start : 16 * end]) for entity, start, end in _runs(entities[by_entity])
    ]


def _runs(sorted_keys: np.ndarray) -> list[tuple[int, int, int]]:
    """(key, start, end) of each run of equal keys in `sorted_keys`."""
    starts = np.flatnonzero(np.diff(sorted_keys, prepend=sorted_keys[:1] - 1))
    ends = np.append(starts[1:], len(sorted_keys))
    return list(zip(sorted_keys[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))
