"""Batches against a real three-node Redis Cluster: grouped per node, in order, redirected."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
import redis
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection
from redis.crc import key_slot

from feature_repo.aggregations import CUSTOMER_SPENDING, TERMINAL_RISK
from serving.worker import fault_dependency
from skewless import redis_batch
from skewless.online_store import OnlineView
from skewless.services import redis_cluster, redis_server
from skewless.settings import Settings
from skewless.stream_state import StreamState, as_columns
from tests.conftest import start_redis_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(redis_cluster_service: Settings) -> Iterator[RedisCluster]:
    client = redis_server.client(redis_cluster_service)
    assert isinstance(client, RedisCluster)
    yield client
    client.close()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The port of every packed write sent (one `send_packed_command` is one write)."""
    ports: list[int] = []
    original = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        ports.append(int(self.port))
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return ports


def _commandstats(cluster: RedisCluster) -> dict[int, dict[str, int]]:
    """Calls per command since the last reset, per primary's port."""
    stats = {}
    for node in cluster.get_primaries():
        info = cast(dict[str, Any], cluster.get_redis_connection(node).info("commandstats"))
        stats[int(node.port)] = {
            name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in info.items()
        }
    return stats


def _reset_stats(cluster: RedisCluster) -> None:
    for node in cluster.get_primaries():
        cluster.get_redis_connection(node).config_resetstat()


def test_a_batch_over_every_node_is_one_write_per_node_with_replies_in_order(
    cluster: RedisCluster, writes: list[int]
) -> None:
    run = uuid.uuid4().hex
    keys = [f"test:{run}:{i}".encode() for i in range(600)]
    owner = {key: int(cluster.get_node_from_key(key).port) for key in keys}
    assert len(set(owner.values())) == 3  # the batch touches every node
    _reset_stats(cluster)
    writes.clear()
    commands: list[redis_batch.Command] = [(b"SET", key, b"%d" % i) for i, key in enumerate(keys)]
    commands += [(b"GET", key) for key in reversed(keys)]
    commands += [(b"HMGET", key + b":absent", b"a", b"b") for key in keys[:5]]
    replies = redis_batch.execute(cluster, commands)
    assert replies[:600] == [b"OK"] * 600
    assert replies[600:1200] == [b"%d" % i for i in reversed(range(600))]
    assert replies[1200:] == [[None, None]] * 5
    # one write per node for the whole batch, and each node ran exactly its keys' commands
    assert sorted(writes) == sorted({int(node.port) for node in cluster.get_primaries()})
    expected = Counter(owner.values())
    for port, calls in _commandstats(cluster).items():
        assert calls.get("set", 0) == calls.get("get", 0) == expected[port]


def test_first_key_looks_on_every_node_and_stops_at_its_budget(cluster: RedisCluster) -> None:
    run = uuid.uuid4().hex.encode()
    keys = [b"%s:filler:%d" % (run, i) for i in range(6_000)]
    redis_batch.execute(cluster, [(b"SET", key, b"1") for key in keys])
    ports = {int(node.port) for node in cluster.get_primaries()}
    assert {cluster.get_node_from_key(key).port for key in keys} == ports  # all nodes hold some
    last = max(keys, key=lambda key: (cluster.get_node_from_key(key).port, key))
    found, sure = redis_batch.first_key(cluster, last, 30)
    assert (found, sure) == (last, True)  # wherever it is
    assert redis_batch.first_key(cluster, run + b":filler:*", 30, unless_under=run) == (None, True)
    assert redis_batch.first_key(cluster, run + b":none:*", 0) == (None, False)  # not walked
    redis_batch.execute(cluster, [(b"UNLINK", key) for key in keys])


def test_an_error_reply_raises_after_every_reply_was_read(cluster: RedisCluster) -> None:
    key = f"test:{uuid.uuid4().hex}".encode()
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        redis_batch.execute(cluster, [(b"SET", key, b"1"), (b"LPUSH", key, b"x")])
    # the connections went back in step: the next batch reads its own replies
    assert redis_batch.execute(cluster, [(b"GET", key)] * 3) == [b"1"] * 3


def test_a_stale_slot_map_is_read_again_after_moved(cluster: RedisCluster) -> None:
    """redis-py's map says another node owns the slots: the nodes answer MOVED, the map is
    read again and the commands sent again, in order."""
    keys = [f"test:{uuid.uuid4().hex}:{i}".encode() for i in range(50)]
    slots = cluster.nodes_manager.slots_cache
    primaries = cluster.get_primaries()
    for key in keys:  # every slot pointed at the next node round
        owner = slots[key_slot(key)][0]
        slots[key_slot(key)] = [primaries[(primaries.index(owner) + 1) % len(primaries)]]
    replies = redis_batch.execute(cluster, [(b"SET", k, k) for k in keys] + [(b"GET", keys[7])])
    assert replies == [b"OK"] * 50 + [keys[7]]
    for key in keys:  # the map read again names the node holding the key
        owner = cluster.nodes_manager.slots_cache[key_slot(key)][0]
        assert cluster.get_redis_connection(owner).exists(key) == 1


def test_the_state_calls_hold_one_slot_each(
    redis_cluster_service: Settings, redis_service: Settings
) -> None:
    """Every key a call names (all the keys it touches) is in one slot; in a single Redis the
    same batch packs many entities per call."""
    batch = as_columns(pd.DataFrame({
        "transaction_id": np.arange(400, dtype=np.int64),
        "tx_datetime": pd.Timestamp("2026-06-01", tz="UTC") + pd.to_timedelta(np.arange(400), "s"),
        "customer_id": np.arange(400, dtype=np.int64) % 150,
        "terminal_id": np.arange(400, dtype=np.int64) % 90,
        "tx_amount": np.ones(400),
    }))  # fmt: skip
    prefix = f"test:{uuid.uuid4().hex}"
    declarations = (CUSTOMER_SPENDING, TERMINAL_RISK)
    state = StreamState(redis_server.client(redis_cluster_service), declarations, prefix)
    single = StreamState(redis_server.client(redis_service), declarations, prefix)
    for agg in state.aggregations:
        events = None if agg.fed_by_labels else batch
        commands, _, _ = state._calls(agg, events, batch, known=batch)
        for command in commands:
            keys = command[3 : 3 + int(command[2])]
            assert len(keys) % 6 == 0  # every key of each entity (`StreamAggregation.keys`)
            assert len({key_slot(key) for key in keys}) == 1
        entities = len(np.unique(batch[agg.declaration.entity_key]))
        assert len(commands) >= len({agg.slot(e) for e in range(entities)})
        assert len(single._calls(agg, events, batch)[0]) == -(-entities // 200)


def test_online_rows_round_trip_through_the_cluster(cluster: RedisCluster) -> None:
    view = OnlineView.of("skewless", CUSTOMER_SPENDING)
    ids = list(range(910_000, 910_300))
    values = np.round(np.random.default_rng(1).uniform(0, 50, (len(ids), len(view.features))))
    micros = [1_780_000_000_000_000 + i for i in range(len(ids))]
    assert view.write_micros(cluster, ids, values, micros) == len(ids)
    read_back, _ = view.read(cluster, ids)
    np.testing.assert_array_equal(read_back, values)


def _rows(count: int) -> pd.DataFrame:
    """`count` transactions of `count // 2` customers, a minute apart (two per customer)."""
    return pd.DataFrame({
        "transaction_id": np.arange(count, dtype=np.int64),
        "tx_datetime": pd.Timestamp("2026-06-01", tz="UTC")
        + pd.to_timedelta(np.arange(count), "min"),
        "customer_id": np.arange(count, dtype=np.int64) % (count // 2),
        "tx_amount": np.arange(count, dtype=float),
    })  # fmt: skip


def test_a_node_that_lost_the_function_gets_it_again(cluster: RedisCluster) -> None:
    """One primary restarted empty (here: its functions flushed): the batch's calls to it fail,
    the library is loaded again on every primary and the batch sent again, with the same
    windows (the calls that had run are idempotent)."""
    state = StreamState(cluster, (CUSTOMER_SPENDING,), f"test:{uuid.uuid4().hex}")
    rows = _rows(60)
    agg = state.aggregations[0]
    assert len({cluster.get_node_from_key(agg.keys(c)[0]).name for c in range(30)}) == 3
    first = state.score_features(rows)["customer_spending"]
    cluster.get_redis_connection(cluster.get_primaries()[1]).function_flush()
    again = state.score_features(rows)["customer_spending"]
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(first[:, 0], np.repeat([1, 2], 30))


def test_a_slot_being_migrated_is_followed_with_asking(cluster: RedisCluster) -> None:
    """A slot migrating to another node: a command for a key its owner no longer has is
    answered ASK, and is sent to the target preceded by ASKING, in order."""
    key = f"test:{uuid.uuid4().hex}".encode()
    slot = key_slot(key)
    source = cluster.get_node_from_key(key)
    target = next(node for node in cluster.get_primaries() if node.name != source.name)
    at_source, at_target = (cluster.get_redis_connection(n) for n in (source, target))
    source_id, target_id = (r.execute_command("CLUSTER", "MYID") for r in (at_source, at_target))
    at_target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    at_source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    try:
        replies = redis_batch.execute(cluster, [(b"SET", key, b"1"), (b"GET", key)])
        assert replies == [b"OK", b"1"]
        keys_at = [r.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000)
                   for r in (at_source, at_target)]  # fmt: skip
        assert key not in keys_at[0] and key in keys_at[1]  # (the slot may hold other keys)
        assert redis_batch.execute(cluster, [(b"DEL", key)]) == [1]
    finally:
        for node in (at_source, at_target):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def test_a_node_restarted_from_its_folder_is_served_again(
    redis_service: Settings, tmp_path: Path
) -> None:
    """A primary stopped mid-stream: the next batch fails as a Redis fault (the worker waits
    it out); once the node is back (append-only file, node table), the same client scores the
    batch again with the same windows."""
    cluster = start_redis_cluster(redis_service, tmp_path / "runtime")
    try:
        client = redis_server.client(cluster.settings)
        state = StreamState(client, (CUSTOMER_SPENDING,), f"test:{uuid.uuid4().hex}")
        first = state.score_features(_rows(90))["customer_spending"]
        redis_cluster.node_process(cluster.settings, cluster.ports[1]).stop()
        with pytest.raises(redis.RedisError) as failed:
            state.score_features(_rows(90))
        assert fault_dependency(failed.value) == "redis"
        cluster.start()
        again = state.score_features(_rows(90))["customer_spending"]
        np.testing.assert_array_equal(again, first)
    finally:
        redis_cluster.stop(cluster.settings)
