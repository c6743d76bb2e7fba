"""Transaction histories (`TransactionHistory`): built offline from feature vectors, kept online
in Redis, with the same bits.

**Offline** (`offline_history`): from the feature vectors of an entity's transactions (the
offline tables' features, one row per transaction), each transaction's earlier ones.

**Online** (`HistoryState`): each entity's last `kept` to `kept + length` transactions in
Redis, written by the scoring core with the vectors it scored them with, read back for each
new transaction in the same call (a Redis Function, `assets/transaction_history.lua`). Keys,
under the hash tag
`{history:entity}` (one Redis Cluster slot per entity; the key head carries a digest of the
declaration, so another length or other features get new keys):
- `...:m`, a sorted set of its transactions with every score 0, so ordered by their bytes:
  time (microseconds) and order key (the transaction id), both big-endian offset binary, then
  the feature vector as little-endian float64;
- `...:i`, a hash from order key to the member stored for it: a replay is a no-op, a re-sent
  transaction (same id, new time or amount) replaces its member.

A transaction's history is the members before its own `(time, order key)`, so members added
later in time never change it, and the same vectors give the same bits offline and online. Ages
are `(t - t_k) / 1e6` seconds in float64 on both sides. A row the worker scored without its
window features (lag fallback) is stored with the vector it was scored with (NaN windows), as
the monitoring's skew check sees it too.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from redis.crc import key_slot

from skewless import redis_batch
from skewless.aggregation import TransactionHistory
from skewless.redis_batch import Client, Command
from skewless.stream_state import EmptyState, KeyLayout, to_micros

logger = logging.getLogger(__name__)

KEY_PREFIX = "skewless:history"
LAYOUT = "h1"
"""Part of every key, with a digest of the declaration: a change of either gets new keys."""
LIBRARY = Path(__file__).parent / "assets" / "transaction_history.lua"
FUNCTION = b"skewless_history_v1"
MAX_ENTITIES_PER_CALL = 200
"""Entities of one call at most (Redis runs one call at a time: others wait meanwhile)."""
LOAD_CHUNK = 2_000
"""Entities per call when a load stores members without reading histories."""
_BIAS = np.uint64(1 << 63)
_MICROS = 1e6
"""Microseconds per second."""

Columns = Mapping[str, np.ndarray]


def prefix_beside(state_prefix: str) -> str:
    """The history's key prefix next to a window state's (`settings.stream_state_prefix`)."""
    return f"{state_prefix}:history"


def offline_history(
    vectors: pd.DataFrame, history: TransactionHistory, wanted: pd.Series | None = None
) -> pd.DataFrame:
    """The history columns of the rows of `vectors` (of those whose `order_key` is in `wanted`).

    `vectors` has one row per transaction: the entity key, event time (UTC datetimes), order key
    and the declared features, for every transaction that may come before a wanted one. The
    result has a row per transaction described, in the order of `vectors`, indexed by its
    order key, and `history.column_names` as columns.
    """
    entities = vectors[history.entity_key].to_numpy(dtype=np.int64)
    micros = to_micros(vectors[history.event_time])
    orders = vectors[history.order_key].to_numpy(dtype=np.int64)
    values = vectors[list(history.features)].to_numpy(dtype=np.float64)
    by_time = np.lexsort((orders, micros, entities))  # per entity, in (time, order key) order
    sorted_entities = entities[by_time]
    starts = np.flatnonzero(np.diff(sorted_entities, prepend=sorted_entities[:1] - 1))
    first = np.repeat(starts, np.diff(np.append(starts, len(by_time))))
    rank = np.arange(len(by_time))
    keep = np.ones(len(by_time), bool)
    if wanted is not None:
        keep = np.isin(orders[by_time], wanted.to_numpy(dtype=np.int64))
    rows, positions = by_time[keep], rank[keep]
    width = len(history.features) + 1
    result = np.full((len(rows), history.length * width), np.nan)
    for step in range(1, history.length + 1):
        present = positions - step >= first[keep]
        earlier = by_time[positions[present] - step]
        at = (step - 1) * width
        result[present, at : at + width - 1] = values[earlier]
        ages = (micros[rows[present]] - micros[earlier]) / _MICROS
        result[present, at + width - 1] = ages
    back = np.argsort(rows)  # the rows in the order of `vectors`
    index = pd.Index(orders[rows[back]], name=history.order_key)
    return pd.DataFrame(result[back], index=index, columns=list(history.column_names))


class HistoryState:
    """A declaration's transaction histories in one Redis or one Redis Cluster."""

    def __init__(
        self, client: Client, history: TransactionHistory, prefix: str = KEY_PREFIX
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"history prefix {prefix!r}: braces would break the hash tags")
        self.client = client
        self.history = history
        self.dtype = np.dtype(
            [("time", ">u8"), ("order", ">u8"), ("vector", "<f8", (len(history.features),))]
        )
        self._reply = np.dtype([("count", "u1"), ("earlier", self.dtype, (history.length,))])
        """A transaction's reply: how many earlier members, then `length` members (padded)."""
        digest = hashlib.blake2s(repr(history).encode(), digest_size=3).hexdigest()
        self._layout = KeyLayout(prefix, LAYOUT, digest, history.name)
        self._head = self._layout.head
        self._library = redis_batch.FunctionLibrary(LIBRARY)
        self._by_slot = isinstance(client, redis.RedisCluster)

    def empty(self) -> EmptyState | None:
        """`EmptyState` when no history has a key in this layout (a look at start-up)."""
        return self._layout.empty(self.client)

    @property
    def key_head(self) -> bytes:
        """What every key of the history (in this layout) starts with."""
        return self._head

    def remove_other_layouts(self) -> int:
        """Unlink the history's keys of other layouts (`StreamState.remove_other_layouts`)."""
        return self._layout.remove_other_layouts(self.client)

    def keys(self, entity_id: int) -> tuple[bytes, bytes]:
        """The entity's members and index keys: every key of the entity."""
        head = b"%s%d}:" % (self._head, entity_id)
        return head + b"m", head + b"i"

    def pack(self, times: np.ndarray, orders: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """The members of transactions (times in microseconds) with their feature vectors."""
        records = np.empty(len(times), dtype=self.dtype)
        records["time"] = np.asarray(times, dtype=np.int64).view(np.uint64) ^ _BIAS
        records["order"] = np.asarray(orders, dtype=np.int64).view(np.uint64) ^ _BIAS
        records["vector"] = vectors
        return records

    def push(self, transactions: Columns, vectors: np.ndarray) -> np.ndarray:
        """Store the batch's transactions with their feature vectors (rows in
        `history.features` order) and return each one's history: one row per transaction,
        `history.column_names` as columns. One round trip; the batch's own transactions are
        in each other's histories."""
        decl = self.history
        times = np.asarray(transactions[decl.event_time], dtype=np.int64)
        records = self.pack(times, transactions[decl.order_key], vectors)
        replies, rows = self._store(transactions[decl.entity_key], records, read=True)
        replied = np.frombuffer(b"".join(replies), self._reply)  # (one per row, in `rows` order)
        earlier = replied["earlier"]
        ages = (times[rows][:, None] - (earlier["time"] ^ _BIAS).view(np.int64)) / _MICROS
        steps = np.concatenate([earlier["vector"], ages[:, :, None]], axis=2)
        steps[np.arange(decl.length)[None, :] >= replied["count"][:, None]] = np.nan  # padding
        result = np.empty((len(times), len(decl.column_names)))
        result[rows] = steps.reshape(len(rows), len(decl.column_names))
        return result

    def initialize(self, vectors: pd.DataFrame, until: datetime) -> int:
        """Make the state that of a stream starting at `until`: every history key of this
        declaration is removed, then each entity's last `kept` transactions before `until`
        (rows of `vectors`, as for `offline_history`) are stored. Returns the members stored."""
        decl = self.history
        removed = redis_batch.remove_keys_under(self.client, self._head)
        micros = to_micros(vectors[decl.event_time])
        before = vectors[micros < to_micros(pd.Series([until.astimezone(UTC)]))[0]]
        before = before.sort_values([decl.event_time, decl.order_key], kind="stable")
        latest = before.groupby(decl.entity_key, sort=False).tail(decl.kept)
        records = self.pack(
            to_micros(latest[decl.event_time]),
            latest[decl.order_key].to_numpy(),
            latest[list(decl.features)].to_numpy(dtype=np.float64),
        )
        self._store(latest[decl.entity_key].to_numpy(), records, read=False)
        logger.info(
            "transaction history %s: %d keys removed, %d transactions of %d entities stored up "
            "to %s",
            *(decl.name, removed, len(latest), latest[decl.entity_key].nunique()),
            until.isoformat(),
        )
        return len(latest)

    def _store(
        self, entities: np.ndarray, records: np.ndarray, read: bool
    ) -> tuple[list[bytes], np.ndarray]:
        """The calls storing `records` entity by entity; each entity's reply (empty unless
        `read`) and the rows in the order the replies describe them."""
        entities = np.asarray(entities, dtype=np.int64)
        order = np.argsort(entities, kind="stable")
        if self._by_slot:
            slots = np.fromiter(
                (key_slot(self.keys(e)[0]) for e in entities.tolist()), np.int64, len(entities)
            )
            order = np.lexsort((entities, slots))
        else:
            slots = np.zeros(len(entities), np.int64)
        decl = self.history
        config = (b"%d" % decl.length, b"%d" % decl.kept, b"%d" % self.dtype.itemsize,
                  b"1" if read else b"0")  # fmt: skip
        limit = MAX_ENTITIES_PER_CALL if read else LOAD_CHUNK
        commands: list[Command] = []
        keys: list[bytes] = []
        blobs: list[bytes] = []
        sorted_entities, sorted_slots = entities[order], slots[order]
        starts = np.flatnonzero(np.diff(sorted_entities, prepend=sorted_entities[:1] - 1))
        ends = np.append(starts[1:], len(order))[: len(starts)]  # (no entity: no run)
        packed, size = records[order].tobytes(), self.dtype.itemsize
        firsts = sorted_entities[starts].tolist()
        new_slot = np.diff(sorted_slots[starts], prepend=-1) != 0
        for entity, start, end, other_slot in zip(
            firsts, starts.tolist(), ends.tolist(), new_slot.tolist(), strict=True
        ):
            if blobs and (len(blobs) >= limit or other_slot):
                commands.append((FCALL, FUNCTION, b"%d" % len(keys), *keys, *config, *blobs))
                keys, blobs = [], []
            keys += self.keys(entity)
            blobs.append(packed[start * size : end * size])
        if blobs:
            commands.append((FCALL, FUNCTION, b"%d" % len(keys), *keys, *config, *blobs))
        replies = self._library.execute(self.client, commands)
        return [blob for reply in replies for blob in reply], order


FCALL = b"FCALL"
