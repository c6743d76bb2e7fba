"""The streaming window state alone: cost per event against history, memory, a hot entity.

Runs against a private Redis started on a free loopback port (the same code as `skewless
services up`), stopped at the end; no Kafka, no model. Three parts, each usable alone:

- `history`: one customer and one terminal with N events in their horizon (N = 100, 10k, 100k,
  300k), then 200 transactions of that customer at that terminal scored one per batch (one
  round trip each): the mean wall time per transaction after the first 20, both declarations,
  and the part of it Redis spent in commands (`INFO commandstats`).
- `memory`: the default demo data (183 days) streamed through the state as the worker does
  (labels due, then a batch of transactions), Redis `used_memory` after 1, 3 and 6 months.
- `hot`: a synthetic stream of 41,000 transactions a day where one terminal carries 20% of
  them (303,400 events in its 37-day horizon), against the same stream with terminals drawn
  uniformly: state cost per event (labels added plus transactions scored, batches of 50)
  and `hot_entity_ratio` = hot / uniform, and the same for the p99 time of a batch
  (`hot_entity_p99_ratio`). The naive baseline is the read of the old sorted-set
  layout (every member of the horizon back to Python, no window math): a lower bound of what
  the old path cost.

- `cluster` (not in the default parts): 10 days of a 2,000-card-holder stream through the state
  in the single Redis and in a private three-node Redis Cluster, batches of 2,000 and of 200
  transactions (labels due, then the batch, as the worker does): milliseconds per batch and
  microseconds per event; and the cluster once more with each node's commands sent and read
  one node after another instead of all nodes at once.

Ends with `state_bench: hot_entity_ratio=<x> hot_entity_p99_ratio=<x>` when the hot part ran
(`make bench` runs the hot part from `stream_bench.py` and puts both on its `bench:` line).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import redis

from skewless import redis_batch
from skewless.aggregation import WindowAggregation, label_delay_days
from skewless.feature_store import load_declarations
from skewless.services import redis_cluster, redis_server
from skewless.settings import Settings, load_settings
from skewless.simulator import SimulationParams, simulate
from skewless.stream_state import StreamState, as_columns

HISTORY_SIZES = (100, 10_000, 100_000, 300_000)
HISTORY_SCORED = 200
WARM_UP = 20
START = pd.Timestamp(datetime(2026, 4, 1, tzinfo=UTC))
DAY = pd.Timedelta(days=1)
HORIZON_DAYS = 37
HOT_EVENTS_PER_DAY = 41_000
HOT_SHARE = 0.2
HOT_STREAM_EVENTS = 40_000
"""Transactions of the hot load streamed and timed (800 batches: a p99 of 8 batches, not 2)."""
BATCH_EVENTS = 2_000
"""Transactions per batch when streaming the demo data (the worker's largest micro-batch)."""
HOT_BATCH_EVENTS = 50
"""Transactions per batch of the hot load: a worker paced at 5,000 events/s that waits 10 ms."""
MONTHS = (1, 3, 6)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis() -> Iterator[tuple[Settings, redis.Redis]]:
    """A Redis of the benchmark's own, on a free port, stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="state-bench-") as runtime:
        settings = load_settings(runtime_dir=Path(runtime), redis_port=free_port())
        redis_server.start(settings)
        client = redis_server.client(settings)
        assert isinstance(client, redis.Redis)  # (a single Redis: the settings name no cluster)
        try:
            yield settings, client
        finally:
            redis_server.stop(settings)


def new_state(
    client: redis_batch.Client, declarations: tuple[WindowAggregation, ...]
) -> StreamState:
    return StreamState(client, declarations, f"bench:{uuid.uuid4().hex[:8]}")


def transactions(times: pd.Series, customers: np.ndarray, terminals: np.ndarray) -> pd.DataFrame:
    """Transactions in the canonical schema, in time order, ids in that order."""
    rng = np.random.default_rng(len(times))
    frame = pd.DataFrame({
        "tx_datetime": pd.to_datetime(times, utc=True),
        "customer_id": customers.astype(np.int64),
        "terminal_id": terminals.astype(np.int64),
        "tx_amount": np.round(rng.gamma(2.0, 30.0, len(times)), 2),
        "tx_fraud": (rng.random(len(times)) < 0.01).astype(np.int8),
    }).sort_values("tx_datetime", kind="stable")  # fmt: skip
    frame.insert(0, "transaction_id", np.arange(len(frame), dtype=np.int64))
    return frame.reset_index(drop=True)


def spread(count: int, first: pd.Timestamp, last: pd.Timestamp, seed: int) -> pd.Series:
    """`count` event times drawn uniformly in [first, last), whole seconds."""
    rng = np.random.default_rng(seed)
    seconds = rng.integers(0, int((last - first).total_seconds()), count)
    return pd.Series(first + pd.to_timedelta(np.sort(seconds), unit="s"))


def history_cost(client: redis.Redis, declarations: tuple[WindowAggregation, ...]) -> None:
    """Mean wall time to score one transaction whose entities hold N events in their horizon."""
    print("| events in horizon | us per transaction (one per round trip) | of which in Redis |")
    print("|---|---|---|")
    until = START + HORIZON_DAYS * DAY
    for size in HISTORY_SIZES:
        past = spread(size, START + pd.Timedelta(seconds=1), until, seed=size)
        later = spread(HISTORY_SCORED, until, until + DAY, seed=size + 1)
        ones = np.ones(size + HISTORY_SCORED)
        raw = transactions(pd.concat([past, later], ignore_index=True), ones, ones)
        state = new_state(client, declarations)
        state.initialize(raw, until.to_pydatetime(), label_delay_days(declarations))
        scored = as_columns(raw[raw["tx_datetime"] >= until].drop(columns=["tx_fraud"]))
        rows = [{name: column[i : i + 1] for name, column in scored.items()}
                for i in range(HISTORY_SCORED)]  # fmt: skip
        for row in rows[:WARM_UP]:  # the first calls load the function, warm the caches
            state.score_features(row)
        client.config_resetstat()
        started = time.perf_counter()
        for row in rows[WARM_UP:]:
            state.score_features(row)
        per_event = (time.perf_counter() - started) / (len(rows) - WARM_UP)
        in_redis = redis_micros(client) / (len(rows) - WARM_UP)
        print(f"| {size:,} | {per_event * 1e6:,.0f} | {in_redis:,.0f} |", flush=True)
        clear(client, state)


def redis_micros(client: redis.Redis) -> int:
    """Microseconds Redis spent in the state's commands since the last CONFIG RESETSTAT.

    With the tiled state every command is an FCALL, whose time includes the commands it runs
    (counted again under their own names); the old layout sent plain commands.
    """
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    if "cmdstat_fcall" in stats:
        return int(stats["cmdstat_fcall"]["usec"])
    return sum(
        int(value["usec"])
        for name, value in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    )


def clear(client: redis.Redis, state: StreamState) -> None:
    prefix = state.aggregations[0].prefix
    keys = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.unlink(*keys[start : start + 10_000])


def stream(
    state: StreamState,
    raw: pd.DataFrame,
    start: pd.Timestamp,
    delay: pd.Timedelta,
    on_batch: Callable[[pd.Timestamp], None] | None = None,
    batch_events: int = BATCH_EVENTS,
    batch_seconds: list[float] | None = None,
) -> tuple[int, float]:
    """Transactions of `raw` from `start` through the state as the worker sees them.

    Before each batch, the labels published up to its last transaction (event time + delay) are
    added. Returns the transactions scored and the seconds spent in the state; each batch's
    seconds are appended to `batch_seconds` when given.
    """
    later = as_columns(raw[raw["tx_datetime"] >= start].drop(columns=["tx_fraud"]))
    labels = as_columns(raw[raw["tx_datetime"] + delay >= start])
    label_times = labels["tx_datetime"] + int(delay / pd.Timedelta(microseconds=1))
    cursor = 0
    spent = 0.0
    count = len(later["tx_datetime"])
    for first in range(0, count, batch_events):
        batch = {name: column[first : first + batch_events] for name, column in later.items()}
        end = int(np.searchsorted(label_times, batch["tx_datetime"][-1], "right"))
        due = {name: column[cursor:end] for name, column in labels.items()}
        cursor = end
        started = time.perf_counter()
        state.add_labels(due)
        state.score_features(batch)
        took = time.perf_counter() - started
        spent += took
        if batch_seconds is not None:
            batch_seconds.append(took)
        if on_batch is not None:
            on_batch(pd.Timestamp(int(batch["tx_datetime"][-1]), unit="us", tz="UTC"))
    return count, spent


def memory_over_months(client: redis.Redis, declarations: tuple[WindowAggregation, ...]) -> None:
    """Redis used_memory after 1, 3 and 6 months of the default demo data through the state."""
    raw = simulate(SimulationParams()).transactions
    delay = pd.Timedelta(days=label_delay_days(declarations))
    client.flushall()
    base = used_memory(client)
    state = new_state(client, declarations)
    begin = raw["tx_datetime"].min()
    marks = [begin + pd.Timedelta(days=30 * months) for months in MONTHS]
    found: dict[int, tuple[int, int]] = {}

    def measure(now: pd.Timestamp) -> None:
        for months, mark in zip(MONTHS, marks, strict=True):
            if months not in found and now >= mark:
                memory = used_memory(client) - base
                found[months] = (memory, int(cast(int, client.dbsize())))

    events, spent = stream(state, raw, begin, delay, measure)
    measure(raw["tx_datetime"].max() + pd.Timedelta(days=365))
    print(f"{events:,} transactions in {spent:.1f} s ({spent / events * 1e6:.0f} us each)")
    print("| months of data | used_memory of the state (MiB) | keys |")
    print("|---|---|---|")
    for months in MONTHS:
        memory, keys = found[months]
        print(f"| {months} | {memory / 2**20:,.1f} | {keys:,} |")
    client.flushall()


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
    return int(info["used_memory"])


def hot_stream(hot: bool) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Horizon days of history, then the benchmarked stream; the stream's first time."""
    days = HORIZON_DAYS + 1
    count = HOT_EVENTS_PER_DAY * days
    rng = np.random.default_rng(7)
    customers = rng.integers(0, 5_000, count)
    terminals = rng.integers(1, 10_000, count)
    if hot:
        terminals[rng.random(count) < HOT_SHARE] = 0
    times = spread(count, START, START + days * DAY, seed=8)
    return transactions(times, customers, terminals), START + HORIZON_DAYS * DAY


def hot_entity(
    client: redis.Redis, declarations: tuple[WindowAggregation, ...]
) -> tuple[float, float]:
    """State cost per event and p99 time of a batch of a hot-terminal stream, each against the
    uniform stream's in the same run."""
    delay = pd.Timedelta(days=label_delay_days(declarations))
    costs, p99s = {}, {}
    for hot in (False, True):
        raw, until = hot_stream(hot)
        scored = raw[raw["tx_datetime"] >= until].head(HOT_STREAM_EVENTS)
        raw = raw[raw["tx_datetime"] <= scored["tx_datetime"].iloc[-1]]
        in_horizon = int((raw["terminal_id"][raw["tx_datetime"] < until] == 0).sum())
        state = new_state(client, declarations)
        state.initialize(raw, until.to_pydatetime(), label_delay_days(declarations))
        seconds: list[float] = []
        events, spent = stream(
            state, raw, until, delay, batch_events=HOT_BATCH_EVENTS, batch_seconds=seconds
        )
        costs[hot] = spent / events
        p99s[hot] = float(np.percentile(seconds, 99))
        naive = naive_read(client, raw, until, declarations)
        name = "hot terminal" if hot else "uniform"
        print(f"{name}: terminal 0 holds {in_horizon:,} events in its horizon; state "
              f"{costs[hot] * 1e6:.1f} us per event, p99 of a batch {p99s[hot] * 1e3:.1f} ms; "
              f"naive read of the old layout {naive * 1e6:.1f} us per event",
              flush=True)  # fmt: skip
        client.flushall()
    return costs[True] / costs[False], p99s[True] / p99s[False]


def naive_read(
    client: redis.Redis,
    raw: pd.DataFrame,
    until: pd.Timestamp,
    declarations: tuple[WindowAggregation, ...],
) -> float:
    """Seconds per event to read every member of each entity's horizon back (the old layout).

    Members are 24 bytes (time, order, one value) in one sorted set per entity, as before
    the tiles; each batch reads the horizon of each of its entities once, as the old path did.
    """
    micros = raw["tx_datetime"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    start = int(until.to_datetime64().astype("datetime64[us]").astype(np.int64))
    member = np.zeros(len(raw), dtype=[("time", "<i8"), ("order", ">u8"), ("value", "<f8")])
    member["time"] = micros
    member["order"] = raw["transaction_id"].to_numpy()
    packed = member.tobytes()
    commands = []
    for decl in declarations:
        groups = cast(dict[int, np.ndarray], raw.groupby(decl.entity_key).indices)
        for entity, rows in groups.items():
            arguments = []
            for row in rows.tolist():
                arguments += [b"%d" % micros[row], packed[24 * row : 24 * row + 24]]
            commands.append((b"ZADD", b"naive:%s:%d" % (decl.name.encode(), entity), *arguments))
    redis_batch.execute(client, commands)
    spent = 0.0
    scored = np.flatnonzero(micros >= start)
    for first in range(0, len(scored), HOT_BATCH_EVENTS):
        rows = scored[first : first + HOT_BATCH_EVENTS]
        started = time.perf_counter()
        reads = []
        for decl in declarations:
            horizon = decl.horizon.days * 86_400_000_000
            low, high = int(micros[rows].min()) - horizon, int(micros[rows].max())
            entities = np.unique(raw[decl.entity_key].to_numpy()[rows])
            reads += [
                (b"ZRANGEBYSCORE", b"naive:%s:%d" % (decl.name.encode(), e), b"(%d" % low,
                 b"%d" % high)
                for e in entities.tolist()
            ]  # fmt: skip
        replies = redis_batch.execute(client, reads)
        np.frombuffer(b"".join(m for reply in replies for m in reply), dtype=member.dtype)
        spent += time.perf_counter() - started
    return spent / len(scored)


@contextmanager
def private_cluster() -> Iterator[redis.RedisCluster]:
    """A three-node Redis Cluster of the benchmark's own, on free ports, stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="state-bench-cluster-") as runtime:
        ports: set[int] = set()
        while len(ports) < 2 * redis_cluster.NODES:
            ports.add(free_port())
        chosen = sorted(ports)
        settings = load_settings(
            runtime_dir=Path(runtime), redis_port=chosen[0], redis_cluster=True
        )
        redis_cluster.start(settings, chosen[:3], chosen[3:])
        try:
            client = redis_server.client(settings)
            assert isinstance(client, redis.RedisCluster)
            yield client
        finally:
            redis_cluster.stop(settings)


@contextmanager
def nodes_one_after_another() -> Iterator[None]:
    """`redis_batch` writing and reading each node's commands before the next node's."""
    all_at_once = redis_batch._send_and_read
    redis_batch._send_and_read = lambda batches: [all_at_once([b])[0] for b in batches]
    try:
        yield
    finally:
        redis_batch._send_and_read = all_at_once


def cluster_cost(single: redis.Redis, declarations: tuple[WindowAggregation, ...]) -> None:
    """The same stream through a single Redis and a three-node cluster, per batch and event."""
    raw = simulate(
        SimulationParams(n_customers=2000, n_terminals=4000, n_days=45, start_date=START.date())
    ).transactions
    start = START + 35 * DAY
    delay_days = label_delay_days(declarations)
    print("| Redis | transactions per batch | ms per batch | us per transaction |")
    print("|---|---|---|---|")
    with private_cluster() as cluster:
        runs: list[tuple[str, redis_batch.Client, int]] = [
            ("single", single, 2000), ("3-node cluster", cluster, 2000),
            ("single", single, 200), ("3-node cluster", cluster, 200),
        ]  # fmt: skip
        for name, client, batch_events in [*runs, ("cluster, nodes in turn", cluster, 2000)]:
            state = new_state(client, declarations)
            state.initialize(raw, start.to_pydatetime(), delay_days)
            if name.endswith("in turn"):
                with nodes_one_after_another():
                    count, spent = stream(state, raw, start, delay_days * DAY, None, batch_events)
            else:
                count, spent = stream(state, raw, start, delay_days * DAY, None, batch_events)
            batches = -(-count // batch_events)
            print(
                f"| {name} | {batch_events:,} | {1000 * spent / batches:.1f} | "
                f"{1e6 * spent / count:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="history,memory,hot", help="comma separated")
    parts = parser.parse_args().parts.split(",")
    declarations = load_declarations(load_settings())
    with private_redis() as (_, client):
        if "history" in parts:
            history_cost(client, declarations)
        if "memory" in parts:
            memory_over_months(client, declarations)
        if "cluster" in parts:
            cluster_cost(client, declarations)
        if "hot" in parts:
            ratio, p99_ratio = hot_entity(client, declarations)
            print(f"state_bench: hot_entity_ratio={ratio:.2f} hot_entity_p99_ratio={p99_ratio:.2f}")


if __name__ == "__main__":
    main()
