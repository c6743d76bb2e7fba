"""End-to-end streaming benchmark: the skewless worker against the naive per-event loop.

The streaming state is first loaded up to the first benchmarked event (as `skewless
materialize --until` would), under a prefix of the benchmark's own. For each offered load, the
demo data's events from there are replayed into private topics at that rate while one worker
process (`skewless serve`) scores them, with the labels a live stream would carry over the same
period (about one per transaction). End-to-end latency of an event is the Kafka timestamp of
its score minus the Kafka timestamp of the transaction; sustained throughput is events over
the time from the first transaction to the last score. The unthrottled load is a backlog: all
events are published first, then the worker starts, and throughput is events over the time
from the worker joining its group to the last score (its latencies are time spent queued, so
they are not reported). The same loads run again with `SKEWLESS_DELIVERY=exactly_once` for
those in `--exactly-once-loads` (default: the unthrottled one); scores are read back with
`isolation_level=read_committed`. In the same run, the naive loop of the common tutorials (one
Feast `get_online_features`, one model call and one acknowledged produce per event) scores
events from the same data.

Needs the local services and a champion model (`make train`). Prints a table and ends with:
`bench: max_throughput=<events/s> p99_ms_at_5000=<ms> naive_ratio=<x>
exactly_once_throughput=<events/s> hot_entity_ratio=<x> hot_entity_p99_ratio=<x>`
(max_throughput is the at-least-once figure; the last two are `state_bench.py`'s hot part,
against a private Redis: state cost per event and p99 of a batch, hot terminal / uniform).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from state_bench import hot_entity, private_redis

from serving.champion import load_version
from serving.replay import label_delay, replay
from skewless import feature_store, redis_batch
from skewless.data import read_transactions, resolve_data
from skewless.services import kafka, redis_server
from skewless.services.process import wait_for
from skewless.settings import Settings, load_settings
from skewless.stream_state import StreamState

LOADS: tuple[float | None, ...] = (1_000, 5_000, 20_000, None)
EXACTLY_ONCE_LOADS: tuple[float | None, ...] = (None,)
SECONDS_PER_LOAD = 8
UNTHROTTLED_EVENTS = 100_000
NAIVE_EVENTS = 1_000
WARM_UP_S = 1.0


STATE_PREFIX = "bench:state"


@dataclass(frozen=True)
class LoadResult:
    offered: float | None
    delivery: str
    achieved_offered: float
    events: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    steady_p99_ms: float
    """p99 of the events sent after the first `WARM_UP_S` seconds."""


def private_settings(base: Settings, delivery: str = "at_least_once") -> Settings:
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        **{
            **base.model_dump(),
            "stream_state_prefix": STATE_PREFIX,
            "topic_transactions": f"bench-tx-{run}",
            "topic_labels": f"bench-labels-{run}",
            "topic_scores": f"bench-scores-{run}",
            "topic_dead_letter": f"bench-dlq-{run}",
            "topic_feature_log": f"bench-flog-{run}",
            "consumer_group": f"bench-{run}",
            "metrics_port": 0,
            "champion_poll_s": 0,
            "delivery": delivery,
        }
    )
    kafka.ensure_topics(settings)
    return settings


def timestamps(settings: Settings, topic: str, expected: int) -> dict[int, int]:
    """Kafka timestamp (ms) of each record of `topic`, keyed by transaction id."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    found: dict[int, int] = {}
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=500, max_records=20_000).values():
            for record in records:
                found[int(json.loads(record.value)["transaction_id"])] = record.timestamp
    consumer.close()
    if len(found) < expected:
        print(f"  warning: {topic} has {len(found)} of {expected} records")
    return found


def start_worker(settings: Settings, events: int) -> tuple[subprocess.Popen[str], float]:
    """A `skewless serve` process for `events` events; returns it once it owns its partitions
    (polled, not slept), with that moment as a wall-clock time in seconds."""
    env = {**os.environ, **feature_store.feast_environment(settings)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "skewless", "serve", "--max-events", str(events),
         "--idle-exit-seconds", "20"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert worker.stdout is not None
    worker.stdout.readline()  # "serve: ..." once the model is loaded and warm
    admin = kafka.admin(settings)
    try:

        def joined() -> bool:
            info = admin.describe_groups([settings.consumer_group]).get(settings.consumer_group)
            state = (info or {}).get("group_state")
            return state == "Stable" and bool((info or {}).get("members"))

        if not wait_for(joined, 60, interval_s=0.01):
            raise RuntimeError("the worker did not join its consumer group within 60 s")
    finally:
        admin.close()
    return worker, time.time()


def run_load(
    base: Settings, data: Path, window: pd.DataFrame, offered: float | None, delivery: str
) -> LoadResult:
    """Replay `window` at `offered` events/s through one worker process; measure it."""
    settings = private_settings(base, delivery)
    first, last = window["tx_datetime"].iloc[0], window["tx_datetime"].iloc[-1]
    end = last + pd.Timedelta(microseconds=1)

    def publish() -> None:
        replay(settings, data, first.to_pydatetime(), end.to_pydatetime(), offered,
               sequence_header=False, trailing_labels=False,
               linger_ms=5 if offered is None else 0)  # fmt: skip

    if offered is None:  # a backlog: everything published before the worker starts
        publish()
        worker, started_s = start_worker(settings, len(window))
    else:
        worker, started_s = start_worker(settings, len(window))
        publish()
    worker.wait(timeout=600)
    events = len(window)
    sent = timestamps(settings, settings.topic_transactions, events)
    scored = timestamps(settings, settings.topic_scores, events)
    delete_topics(settings)
    ids = [i for i in sent if i in scored]
    latency = np.array([scored[i] - sent[i] for i in ids], dtype=float)
    first_sent_s = min(sent[i] for i in ids) / 1000
    last_scored_s = max(scored[i] for i in ids) / 1000
    sending_s = max(1e-3, (max(sent.values()) - min(sent.values())) / 1000)
    if offered is None:
        elapsed_s = last_scored_s - started_s
        quantiles = [float("nan")] * 4
    else:
        elapsed_s = last_scored_s - first_sent_s
        quantiles = [float(np.percentile(latency, q)) for q in (50, 95, 99)]
        after_warm_up = np.array([sent[i] / 1000 - first_sent_s >= WARM_UP_S for i in ids])
        quantiles.append(float(np.percentile(latency[after_warm_up], 99)))
    achieved = len(sent) / sending_s
    return LoadResult(offered, delivery, achieved, len(ids), len(ids) / elapsed_s, *quantiles)


def delete_topics(settings: Settings) -> None:
    """The load's private topics, once measured (a broker with hundreds of them slows down)."""
    admin = kafka.admin(settings)
    try:
        admin.delete_topics([
            settings.topic_transactions, settings.topic_labels, settings.topic_scores,
            settings.topic_dead_letter, settings.topic_feature_log,
        ])  # fmt: skip
    finally:
        admin.close()


def load_state(base: Settings, raw: pd.DataFrame, until: pd.Timestamp) -> None:
    """The streaming state a stream starting at `until` needs, under the benchmark's prefix."""
    settings = private_settings(base)
    declarations = feature_store.load_declarations(settings)
    client = redis_server.client(settings)
    clear_state(client)
    state = StreamState(client, declarations, STATE_PREFIX)
    state.initialize(raw, until.to_pydatetime(), label_delay(declarations).days)


def clear_state(client: redis_batch.Client) -> None:
    keys = list(client.scan_iter(match=f"{STATE_PREFIX}:*", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.unlink(*keys[start : start + 10_000])


def naive_baseline(settings: Settings, frame: pd.DataFrame) -> float:
    """Events/s of one Feast lookup, one model call and one acknowledged produce per event."""
    store = feature_store.open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    model = load_version(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    private = private_settings(settings)
    topic = private.topic_scores
    rows = frame.head(NAIVE_EVENTS)
    started = time.perf_counter()
    for row in rows.to_dict("records"):
        features = store.get_online_features(
            features=service,
            entity_rows=[{
                "customer_id": int(row["customer_id"]), "terminal_id": int(row["terminal_id"]),
                "tx_amount": float(row["tx_amount"]), "tx_datetime": row["tx_datetime"],
            }],
        ).to_dict()  # fmt: skip
        vector = np.array([[features[name][0] if features[name][0] is not None else np.nan
                            for name in model.feature_names]], dtype=np.float32)  # fmt: skip
        score = float(model.score(vector)[0])
        body = json.dumps({"transaction_id": int(row["transaction_id"]), "score": score}).encode()
        producer.send(topic, body).get(timeout=10)
    elapsed = time.perf_counter() - started
    producer.close()
    delete_topics(private)
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--loads", default=",".join(str(int(x or 0)) for x in LOADS),
        help="offered loads in events/s, comma separated; 0 is unthrottled (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--exactly-once-loads", default=",".join(str(int(x or 0)) for x in EXACTLY_ONCE_LOADS),
        help="loads run again with SKEWLESS_DELIVERY=exactly_once ('' for none; default: 0)",
    )  # fmt: skip
    args = parser.parse_args()
    runs = [(float(x) or None, "at_least_once") for x in args.loads.split(",")]
    runs += [(float(x) or None, "exactly_once") for x in args.exactly_once_loads.split(",") if x]
    base = load_settings()
    data = resolve_data(base, None)
    raw = read_transactions(data)
    start = raw["tx_datetime"].max() - timedelta(days=60)
    later = raw[raw["tx_datetime"] >= start].reset_index(drop=True)
    print(f"loading the streaming state up to {start} ...", flush=True)
    load_state(base, raw, start)
    results = []
    for offered, delivery in runs:
        events = UNTHROTTLED_EVENTS if offered is None else int(offered * SECONDS_PER_LOAD)
        window = later.head(min(events, len(later)))
        print(f"load {offered or 'unthrottled'} {delivery}: {len(window)} events ...", flush=True)
        results.append(run_load(base, data, window, offered, delivery))
    naive = naive_baseline(base, later)
    clear_state(redis_server.client(base))
    print()
    print("| delivery | offered (events/s) | achieved offered | events | sustained (events/s) "
          f"| p50 ms | p95 ms | p99 ms | p99 ms after {WARM_UP_S:.0f} s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.offered is None:
            row = f"| {r.delivery} | unthrottled (backlog) | - | {r.events:,} |"
            print(row + f" {r.throughput:,.0f} | - | - | - | - |")
            continue
        latency = f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.steady_p99_ms:.1f}"
        print(f"| {r.delivery} | {r.offered:,.0f} | {r.achieved_offered:,.0f} | {r.events:,} | "
              f"{r.throughput:,.0f} | {latency} |")  # fmt: skip
    print(f"| - | naive per-event loop | - | {NAIVE_EVENTS:,} | {naive:,.0f} | - | - | - | - |")
    at_least_once = [r for r in results if r.delivery == "at_least_once"]
    exactly_once = [r for r in results if r.delivery == "exactly_once"]
    best = max((r.throughput for r in at_least_once), default=float("nan"))
    best_exactly_once = max((r.throughput for r in exactly_once), default=float("nan"))
    at_5000 = next((r.p99_ms for r in at_least_once if r.offered == 5_000), float("nan"))
    print("hot-entity load of the window state (state_bench.py --parts hot) ...", flush=True)
    with private_redis() as (_, client):
        hot_ratio, hot_p99_ratio = hot_entity(client, feature_store.load_declarations(base))
    print(f"bench: max_throughput={best:.0f} p99_ms_at_5000={at_5000:.1f} "
          f"naive_ratio={best / naive:.1f} "
          f"exactly_once_throughput={best_exactly_once:.0f} "
          f"hot_entity_ratio={hot_ratio:.2f} hot_entity_p99_ratio={hot_p99_ratio:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
