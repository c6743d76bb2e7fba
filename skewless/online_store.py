"""Feast's Redis online-store format, read and written with one pipeline per batch.

The bytes are Feast's own (entity key serialization v3, murmur3 field names, `ValueProto`
values, a protobuf `Timestamp` per view), so `feast materialize`, `get_online_features` and
our batch writer and reader agree; a contract test holds them to it. What this module saves is
Feast's per-call overhead: keys and field names are built once per view, and a whole batch
goes in one round trip (in a Redis Cluster, one write per node, all nodes at once).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain

import mmh3
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from skewless import redis_batch
from skewless.aggregation import WindowAggregation
from skewless.redis_batch import Client, Command

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_TYPE = 4
_STRING_TYPE = 2


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_INT64_VALUES = [b"\x20" + _varint(count) for count in range(1 << 14)]
_DOUBLE_VALUE = np.dtype([("tag", "u1"), ("value", "<f8")])


def _int64_value(value: int) -> bytes:
    """A serialized Feast `Value` with `int64_val` (field 4, varint; negatives as 10 bytes)."""
    if 0 <= value < len(_SMALL_INT64_VALUES):
        return _SMALL_INT64_VALUES[value]
    return b"\x20" + _varint(value & 0xFFFFFFFFFFFFFFFF)


def _micros(moment: datetime) -> int:
    return (moment.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def _timestamp_from_micros(micros: int) -> bytes:
    """A serialized `google.protobuf.Timestamp` (seconds = 1, nanos = 2; zeros omitted)."""
    seconds, micros_left = divmod(micros, 1_000_000)
    nanos = micros_left * 1000
    out = b""
    if seconds:
        out += b"\x08" + _varint(seconds & 0xFFFFFFFFFFFFFFFF)
    if nanos:
        out += b"\x10" + _varint(nanos)
    return out


def _field_key(view: str, feature: str) -> bytes:
    """Feast's hash field name of a feature: murmur3_32 of `view:feature`, little endian."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


@dataclass(frozen=True)
class OnlineView:
    """One feature view's layout in Redis, keyed by a single int64 join key."""

    project: str
    view: str
    join_key: str
    features: tuple[str, ...]
    is_count: tuple[bool, ...]
    _key_prefix: bytes = field(init=False, repr=False)
    _fields: tuple[bytes, ...] = field(init=False, repr=False)
    _timestamp_field: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        name = self.join_key.encode()
        prefix = struct.pack("<III", 1, _STRING_TYPE, len(name)) + name
        prefix += struct.pack("<II", _INT64_TYPE, 8)
        object.__setattr__(self, "_key_prefix", prefix)
        object.__setattr__(self, "_fields", tuple(_field_key(self.view, f) for f in self.features))
        object.__setattr__(self, "_timestamp_field", f"_ts:{self.view}".encode())

    @classmethod
    def of(cls, project: str, declaration: WindowAggregation) -> OnlineView:
        """The layout of the feature view built from a window declaration."""
        features = declaration.feature_names
        counts = [name in declaration.count_features for name in features]
        return cls(
            project, declaration.name, declaration.entity_key, tuple(features), tuple(counts)
        )

    @property
    def timestamp_field(self) -> bytes:
        return self._timestamp_field

    def redis_key(self, entity_id: int) -> bytes:
        """Feast's Redis key of an entity (serialization v3) in this project."""
        return self._key_prefix + struct.pack("<q", entity_id) + self.project.encode()

    def encode(self, values: Sequence[float], event_time: datetime) -> dict[bytes, bytes]:
        """The hash fields of one entity's row: every feature plus the view's timestamp."""
        (row,) = self._hash_fields(np.asarray([values], dtype=np.float64), [_micros(event_time)])
        return dict(zip(row[0::2], row[1::2], strict=True))

    def _hash_fields(self, values: np.ndarray, event_micros: Sequence[int]) -> list[list[bytes]]:
        """Per row: field, value, field, value, ..., timestamp field, timestamp.

        The protobuf bytes are written directly (Feast's `Value` with `int64_val` = field 4 or
        `double_val` = field 5, and a `Timestamp`), column by column; the contract test holds
        them to Feast's.
        """
        columns: list[list[bytes]] = []
        for column, is_count in enumerate(self.is_count):
            if is_count:
                counts = values[:, column].astype(np.int64).tolist()
                columns.append([_int64_value(count) for count in counts])
            else:
                packed = np.empty(len(values), dtype=_DOUBLE_VALUE)
                packed["tag"] = 0x29
                packed["value"] = values[:, column]
                raw = packed.tobytes()
                size = _DOUBLE_VALUE.itemsize
                columns.append([raw[i : i + size] for i in range(0, len(raw), size)])
        columns.append([_timestamp_from_micros(int(us)) for us in event_micros])
        fields = (*self._fields, self._timestamp_field)
        return [
            list(chain.from_iterable(zip(fields, row, strict=True)))
            for row in zip(*columns, strict=True)
        ]

    def write_commands(
        self, entity_ids: Sequence[int], values: np.ndarray, event_micros: Sequence[int]
    ) -> list[Command]:
        """The HSET of each entity's row (event times in microseconds), for `redis_batch`."""
        rows = self._hash_fields(np.asarray(values, dtype=np.float64), event_micros)
        return [
            (b"HSET", self.redis_key(int(entity_id)), *row)
            for entity_id, row in zip(entity_ids, rows, strict=True)
        ]

    def write_micros(
        self,
        client: Client,
        entity_ids: Sequence[int],
        values: np.ndarray,
        event_micros: Sequence[int],
    ) -> int:
        """Write one row per entity in one round trip; event times in microseconds."""
        commands = self.write_commands(entity_ids, values, event_micros)
        redis_batch.execute(client, commands)
        return len(commands)

    def write(
        self,
        client: Client,
        entity_ids: Sequence[int],
        values: np.ndarray,
        event_times: Sequence[datetime],
    ) -> int:
        """Write one row per entity in one round trip; returns the rows written."""
        return self.write_micros(client, entity_ids, values, [_micros(t) for t in event_times])

    def read(
        self, client: Client, entity_ids: Sequence[int]
    ) -> tuple[np.ndarray, list[datetime | None]]:
        """Rows of `entity_ids` (NaN where missing) and their event times, in one round trip."""
        from feast.protos.feast.types.Value_pb2 import Value

        fields = (*self._fields, self.timestamp_field)
        commands = [(b"HMGET", self.redis_key(int(entity_id)), *fields) for entity_id in entity_ids]
        replies = redis_batch.execute(client, commands)
        values = np.full((len(entity_ids), len(self.features)), np.nan)
        times: list[datetime | None] = []
        for row, reply in enumerate(replies):
            for column, raw in enumerate(reply[:-1]):
                if raw:
                    proto = Value.FromString(raw)
                    kind = proto.WhichOneof("val")
                    if kind is not None:
                        values[row, column] = getattr(proto, kind)
            stamp_raw = reply[-1]
            if stamp_raw:
                stamp = Timestamp.FromString(stamp_raw)
                times.append(stamp.ToDatetime(tzinfo=UTC))
            else:
                times.append(None)
        return values, times
