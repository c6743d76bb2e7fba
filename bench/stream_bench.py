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
`isolation_level=read_committed`. Scale-out: a backlog on a topic of `SCALE_OUT_PARTITIONS`
partitions is read by one worker, then another backlog by two worker processes of one group.
Each load streams the data's events after the previous load's (`HISTORY_DAYS`). In the same
run, the naive loop of the common tutorials (one
Feast `get_online_features`, one model call and one acknowledged produce per event) scores
events from the same data, and the champion's serving latency is timed (one ONNX Runtime call
per batch of 1, 500 and 2,000 rows).

Needs the local services and a champion model (`make train`). Prints a table and ends with:
`bench: max_throughput=<events/s> p99_ms_at_5000=<ms> naive_ratio=<x>
exactly_once_throughput=<events/s> hot_entity_ratio=<x> hot_entity_p99_ratio=<x>
two_workers_throughput=<events/s> two_workers_ratio=<x>`
(max_throughput is the at-least-once figure of one worker; the hot-entity figures are
`state_bench.py`'s hot part, against a private Redis: state cost per event and p99 of a batch,
hot terminal / uniform; the last two are the scale-out backlog's, two workers against one).
`--profile` only runs the worker under cProfile on a backlog and prints its top entries.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import confluent_kafka
import numpy as np
import pandas as pd
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError
from state_bench import hot_entity, private_redis

from serving.champion import load_version
from serving.replay import replay
from skewless import feature_store, redis_batch
from skewless.data import read_transactions, resolve_data
from skewless.services import kafka, redis_server
from skewless.services.process import wait_for
from skewless.settings import Settings, load_settings
from training.materialize import load_stream_state

LOADS: tuple[float | None, ...] = (1_000, 5_000, 20_000, None)
EXACTLY_ONCE_LOADS: tuple[float | None, ...] = (None,)
SECONDS_PER_LOAD = 8
UNTHROTTLED_EVENTS = 100_000
NAIVE_EVENTS = 1_000
WARM_UP_S = 1.0
HISTORY_DAYS = 90
"""The benchmarked events are the data's after this many days before its end, each load
taking the events after the previous load's (a state that saw an event once finds a second
sending of it unchanged, which costs less: no load may replay another's)."""
MODEL_BATCHES = (1, 500, 2_000)
MODEL_CALLS = 300
PROFILE_EVENTS = 50_000
SCALE_OUT_PARTITIONS = 4
SCALE_OUT_EVENTS = 100_000
"""The scale-out loads: backlogs of this many events on a topic of this many partitions, read
by one worker, then by two."""
IDLE_EXIT_S = 20
PROFILE_TOP = 30


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
    p999_ms: float
    steady_p99_ms: float
    """p99 of the events sent after the first `WARM_UP_S` seconds."""
    workers: int = 1
    partitions: int = 0


def private_settings(
    base: Settings, delivery: str = "at_least_once", partitions: int | None = None
) -> Settings:
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        **{
            **base.model_dump(),
            "kafka_partitions": partitions or base.kafka_partitions,
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


def start_workers(
    settings: Settings, events: int, workers: int = 1, profile: Path | None = None
) -> tuple[list[subprocess.Popen[str]], float]:
    """`workers` `skewless serve` processes (each its own SKEWLESS_WORKER_ID) for `events`
    events (the first under cProfile, writing `profile`, if given); returns them once the group
    is stable with all of them (polled, not slept), with that moment as a wall-clock time in
    seconds. One worker exits after its `events`, several once idle for `IDLE_EXIT_S`."""
    env = {**os.environ, **feature_store.feast_environment(settings)}
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    processes = []
    for number in range(workers):
        processes.append(subprocess.Popen(
            [*python, "-m", "skewless", "serve", "--max-events", str(events),
             "--idle-exit-seconds", str(IDLE_EXIT_S)],
            env={**env, "SKEWLESS_WORKER_ID": f"bench-{number}"},
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        ))  # fmt: skip
        python = [sys.executable]
    for process in processes:
        assert process.stdout is not None
        process.stdout.readline()  # "serve: ..." once the model is loaded and warm
    admin = kafka.admin(settings)
    try:

        def joined() -> bool:
            info = admin.describe_groups([settings.consumer_group]).get(settings.consumer_group)
            state = (info or {}).get("group_state")
            return state == "Stable" and len((info or {}).get("members") or ()) == workers

        if not wait_for(joined, 60, interval_s=0.01):
            raise RuntimeError(f"{workers} workers did not join their group within 60 s")
    finally:
        admin.close()
    return processes, time.time()


class _Delivered:
    """The outcome of one record of `FastProducer`, as much of a kafka-python future as a
    replay uses."""

    def __init__(self) -> None:
        self.errbacks: list[Callable[[BaseException], object]] = []

    def add_errback(self, errback: Callable[[BaseException], object]) -> None:
        self.errbacks.append(errback)

    def done(self, error: confluent_kafka.KafkaError | None, _: object) -> None:
        if error is not None:
            for errback in self.errbacks:
                errback(confluent_kafka.KafkaException(error))


class FastProducer:
    """The benchmark's replaying producer: librdkafka (confluent-kafka) behind the calls a
    replay makes of kafka-python's `KafkaProducer` (`serving.replay.Producer`), idempotent with
    `acks=all` like it. kafka-python's Python send path tops out near 11,000 events/s on this
    machine while the worker, Kafka and Redis run; the benchmark must offer its load whole."""

    def __init__(self, settings: Settings, linger_ms: int) -> None:
        self._producer = confluent_kafka.Producer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "client.id": "skewless-bench-replay",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": 1_000_000,
        })  # fmt: skip

    def partitions_for(self, topic: str) -> set[int]:
        return set(self._producer.list_topics(topic, timeout=10).topics[topic].partitions)

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> _Delivered:
        delivered = _Delivered()
        carried: list[tuple[str, str | bytes | None]] | None = list(headers) if headers else None
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=carried, on_delivery=delivered.done
                )
                break
            except BufferError:  # its queue is full: let it deliver
                self._producer.poll(0.01)
        self._producer.poll(0)  # (delivery callbacks)
        return delivered

    def flush(self, timeout: float | None = None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"{left} records not delivered in {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)


def publish_window(
    settings: Settings, data: Path, window: pd.DataFrame, offered: float | None
) -> None:
    """Replay the events of `window` (consecutive rows of the data) at `offered` events/s, with
    the labels a live stream would carry over the same period."""
    first, last = window["tx_datetime"].iloc[0], window["tx_datetime"].iloc[-1]
    end = last + pd.Timedelta(microseconds=1)
    replay(settings, data, first.to_pydatetime(), end.to_pydatetime(), offered,
           sequence_header=False, trailing_labels=False,
           linger_ms=5 if offered is None else 0, make_producer=FastProducer)  # fmt: skip


def run_load(
    base: Settings,
    data: Path,
    window: pd.DataFrame,
    offered: float | None,
    delivery: str,
    workers: int = 1,
    partitions: int | None = None,
) -> LoadResult:
    """Replay `window` at `offered` events/s through `workers` worker processes; measure it."""
    settings = private_settings(base, delivery, partitions)
    if offered is None:  # a backlog: everything published before the workers start
        publish_window(settings, data, window, offered)
        processes, started_s = start_workers(settings, len(window), workers)
    else:
        processes, started_s = start_workers(settings, len(window), workers)
        publish_window(settings, data, window, offered)
    for process in processes:
        process.wait(timeout=600)
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
        quantiles = [float("nan")] * 5
    else:
        elapsed_s = last_scored_s - first_sent_s
        quantiles = [float(np.percentile(latency, q)) for q in (50, 95, 99, 99.9)]
        after_warm_up = np.array([sent[i] / 1000 - first_sent_s >= WARM_UP_S for i in ids])
        quantiles.append(float(np.percentile(latency[after_warm_up], 99)))
    achieved = len(sent) / sending_s
    p50, p95, p99, p999, steady_p99 = quantiles
    return LoadResult(offered, delivery, achieved, len(ids), len(ids) / elapsed_s, p50, p95, p99,
                      p999, steady_p99, workers, settings.kafka_partitions)  # fmt: skip


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
    """The streaming state a stream starting at `until` needs (windows and transaction
    history), under the benchmark's prefix."""
    settings = private_settings(base)
    clear_state(redis_server.client(settings))
    load_stream_state(settings, raw, until.to_pydatetime())


def clear_state(client: redis_batch.Client) -> None:
    """Remove every key under the benchmark's prefix (windows and history, any layout)."""
    redis_batch.remove_keys_under(client, f"{STATE_PREFIX}:".encode())


def naive_baseline(settings: Settings, frame: pd.DataFrame) -> float:
    """Events/s of one Feast lookup, one model call and one acknowledged produce per event.

    Feast serves no transaction history: for a sequence model the loop feeds its history as
    padding (NaN), which costs the model the same time."""
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
        vector = np.array([[np.nan if features.get(name, [None])[0] is None else features[name][0]
                            for name in model.feature_names]], dtype=np.float32)  # fmt: skip
        score = float(model.score(vector)[0])
        body = json.dumps({"transaction_id": int(row["transaction_id"]), "score": score}).encode()
        producer.send(topic, body).get(timeout=10)
    elapsed = time.perf_counter() - started
    producer.close()
    delete_topics(private)
    return len(rows) / elapsed


def model_latency(settings: Settings, version: str | None = None) -> str:
    """The champion's (or `version`'s) serving latency (its ONNX export, loaded as the worker
    loads it): p50 and p99 milliseconds of one call, per batch size in `MODEL_BATCHES`, on
    random positive rows (the network's time does not depend on the values)."""
    model = load_version(settings, version)
    rng = np.random.default_rng(11)
    width = len(model.feature_names)
    base = rng.lognormal(size=(max(MODEL_BATCHES), width)).astype(np.float32)
    model.warm_up()
    figures = []
    for rows in MODEL_BATCHES:
        matrix = base[:rows]
        seconds = []
        for _ in range(MODEL_CALLS):
            started = time.perf_counter()
            model.score(matrix)
            seconds.append(time.perf_counter() - started)
        p50, p99 = np.percentile(seconds, [50, 99]) * 1e3
        figures.append(f"{rows:,} rows p50 {p50:.3f} ms p99 {p99:.3f} ms")
    return (f"model {model.name} version {model.version} ({width} features, ONNX Runtime, one "
            f"thread): {', '.join(figures)}")  # fmt: skip


def profile_worker(base: Settings, data: Path, window: pd.DataFrame) -> None:
    """The worker under cProfile on a backlog of `window` (at-least-once): its top entries, in
    microseconds per event (profiling slows Python code down, not the servers' time)."""
    settings = private_settings(base)
    publish_window(settings, data, window, None)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "worker.prof"
        (worker,), _ = start_workers(settings, len(window), profile=path)
        worker.wait(timeout=900)
        stats = pstats.Stats(str(path))
    delete_topics(settings)
    events = len(window)
    entries = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in entries.items():
        where = filename.split("site-packages/")[-1].split("/work/")[-1]
        rows.append((cumulative, own, calls, f"{where}:{line}({name})", filename))
    print(f"\n{events:,} events; microseconds per event (cumulative, own), calls per event\n")
    print("| function (the project's, by cumulative time) | cumulative us/event | own us/event "
          "| calls/event |")  # fmt: skip
    print("|---|---|---|---|")
    ours = [row for row in rows if "/serving/" in row[4] or "/skewless/" in row[4]]
    for cumulative, own, calls, name, _ in sorted(ours, reverse=True)[:PROFILE_TOP]:
        print(f"| `{name}` | {cumulative / events * 1e6:.1f} | {own / events * 1e6:.1f} | "
              f"{calls / events:.3f} |")  # fmt: skip
    print("\n| function (any, by own time) | own us/event | calls/event |")
    print("|---|---|---|")
    for _, own, calls, name, _ in sorted(rows, key=lambda r: -r[1])[:PROFILE_TOP]:
        print(f"| `{name}` | {own / events * 1e6:.1f} | {calls / events:.3f} |")


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
    parser.add_argument(
        "--no-scale-out", dest="scale_out", action="store_false",
        help=f"leave out the scale-out loads (1 and 2 workers, {SCALE_OUT_PARTITIONS} partitions)",
    )  # fmt: skip
    parser.add_argument(
        "--model-latency", metavar="VERSION", nargs="?", const="champion",
        help="only measure a registered version's model latency (default: the champion's)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help=f"only profile the worker on a backlog of {PROFILE_EVENTS:,} events (cProfile)",
    )  # fmt: skip
    args = parser.parse_args()
    loads = [(float(x) or None, "at_least_once") for x in args.loads.split(",")]
    loads += [(float(x) or None, "exactly_once") for x in args.exactly_once_loads.split(",") if x]
    # (offered, delivery, workers, partitions (None: the settings'), events)
    runs: list[tuple[float | None, str, int, int | None, int]] = [
        (offered, delivery, 1, None,
         UNTHROTTLED_EVENTS if offered is None else int(offered * SECONDS_PER_LOAD))
        for offered, delivery in loads
    ]  # fmt: skip
    if args.scale_out:
        for workers in (1, 2):
            runs.append((None, "at_least_once", workers, SCALE_OUT_PARTITIONS, SCALE_OUT_EVENTS))
    base = load_settings()
    if args.model_latency:
        version = None if args.model_latency == "champion" else args.model_latency
        print(model_latency(base, version))
        return
    data = resolve_data(base, None)
    raw = read_transactions(data)
    start = raw["tx_datetime"].max() - timedelta(days=HISTORY_DAYS)
    later = raw[raw["tx_datetime"] >= start].reset_index(drop=True)
    print(f"loading the streaming state up to {start} ...", flush=True)
    load_state(base, raw, start)
    if args.profile:
        profile_worker(base, data, later.head(PROFILE_EVENTS))
        clear_state(redis_server.client(base))
        return
    results = []
    used = 0  # each load streams the events after the previous load's: the state goes on
    for offered, delivery, workers, partitions, events in runs:
        window = later.iloc[used : used + events]
        used += len(window)
        if len(window) < events:
            raise SystemExit(f"the data has {len(later):,} events after {start}: too few")
        print(f"load {offered or 'unthrottled'} {delivery} x{workers}: {len(window)} events ...",
              flush=True)  # fmt: skip
        results.append(run_load(base, data, window, offered, delivery, workers, partitions))
    naive = naive_baseline(base, later)
    model_figures = model_latency(base)
    clear_state(redis_server.client(base))
    print()
    print("| delivery | workers x partitions | offered (events/s) | achieved offered | events "
          "| sustained (events/s) | p50 ms | p95 ms | p99 ms | p99.9 ms "
          f"| p99 ms after {WARM_UP_S:.0f} s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        shape = f"{r.workers} x {r.partitions}"
        if r.offered is None:
            row = f"| {r.delivery} | {shape} | unthrottled (backlog) | - | {r.events:,} |"
            print(row + f" {r.throughput:,.0f} | - | - | - | - | - |")
            continue
        latency = (f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.p999_ms:.1f} | "
                   f"{r.steady_p99_ms:.1f}")  # fmt: skip
        print(f"| {r.delivery} | {shape} | {r.offered:,.0f} | {r.achieved_offered:,.0f} | "
              f"{r.events:,} | {r.throughput:,.0f} | {latency} |")  # fmt: skip
    print(f"| - | - | naive per-event loop | - | {NAIVE_EVENTS:,} | {naive:,.0f} "
          "| - | - | - | - | - |")  # fmt: skip
    scale_out = [r for run, r in zip(runs, results, strict=True) if run[3] is not None]
    two_workers = max((r.throughput for r in scale_out if r.workers == 2), default=float("nan"))
    one_worker = max((r.throughput for r in scale_out if r.workers == 1), default=float("nan"))
    results = [r for r in results if r not in scale_out]
    at_least_once = [r for r in results if r.delivery == "at_least_once"]
    exactly_once = [r for r in results if r.delivery == "exactly_once"]
    best = max((r.throughput for r in at_least_once), default=float("nan"))
    best_exactly_once = max((r.throughput for r in exactly_once), default=float("nan"))
    at_5000 = next((r.p99_ms for r in at_least_once if r.offered == 5_000), float("nan"))
    print(model_figures)
    print("hot-entity load of the window state (state_bench.py --parts hot) ...", flush=True)
    with private_redis() as (_, client):
        hot_ratio, hot_p99_ratio = hot_entity(client, feature_store.load_declarations(base))
    print(f"bench: max_throughput={best:.0f} p99_ms_at_5000={at_5000:.1f} "
          f"naive_ratio={best / naive:.1f} "
          f"exactly_once_throughput={best_exactly_once:.0f} "
          f"hot_entity_ratio={hot_ratio:.2f} hot_entity_p99_ratio={hot_p99_ratio:.2f} "
          f"two_workers_throughput={two_workers:.0f} "
          f"two_workers_ratio={two_workers / one_worker:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
