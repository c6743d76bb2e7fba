"""The scoring worker against real Kafka, Redis and the MLflow registry of a trained platform."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from monitoring.feature_log import feature_log_rows
from serving import delivery
from serving.delivery import DeliveryStoppedError
from serving.replay import replay
from serving.worker import build_worker
from skewless import registry
from skewless.feature_store import feast_environment, offline_table_path
from skewless.services import kafka, redis_server
from skewless.services.process import wait_for
from skewless.settings import Settings, load_settings
from skewless.spark import spark_session
from tests.conftest import (
    TrainedPlatform,
    event_body,
    free_port,
    private_settings,
    start_enricher,
    stop_enricher,
)
from training import tracking
from training.pipeline import materialize_with_progress

pytestmark = pytest.mark.integration

REPLAY_START = datetime(2026, 5, 25, tzinfo=UTC)


def _read_all(settings: Settings, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    """Every committed record of `topic` (JSON values), waiting until `expected` arrived.

    Read as every consumer of the worker's output must read it: `read_committed`, so that the
    records of a transaction an exactly-once worker aborted (or never finished) are skipped.
    """
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
        isolation_level="read_committed",
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            records.extend(record for record in consumer)
            if len(records) >= expected:
                break
    finally:
        consumer.close()
    return [(r.key, json.loads(r.value)) for r in records]


def _seen(settings: Settings, topic: str, count: int, timeout_s: float) -> bool:
    """Whether `topic` holds at least `count` committed records within `timeout_s` (returns as
    soon as it does, even while records keep arriving)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count and time.monotonic() < deadline:
            seen += sum(len(batch) for batch in consumer.poll(timeout_ms=100).values())
    finally:
        consumer.close()
    return seen >= count


def _logged_rows(settings: Settings, into: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row on the feature-log topic (one record per micro-batch), replacing `into`."""
    into[:] = [row for _, body in _read_all(settings, settings.topic_feature_log, 0, 5)
               for row in feature_log_rows(json.dumps(body).encode())]  # fmt: skip
    return into


def _serve_replay(
    settings: Settings, data: Path, start: datetime, end: datetime, expected: int
) -> list[dict[str, Any]]:
    """Replay `[start, end)` of `data`, serve it with one worker (every event scored) and
    return the feature-log rows."""
    replay(settings, data, start, end, None)
    stats = build_worker(settings).run(max_events=expected, idle_exit_s=20)
    assert stats.scored == expected
    logged: list[dict[str, Any]] = []
    assert wait_for(lambda: len(_logged_rows(settings, logged)) >= expected, 60)
    return logged


def _publish(settings: Settings, events: pd.DataFrame) -> None:
    """Publish `events` to the transactions topic, keyed by customer, and wait for them."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for _, row in events.iterrows():
        body = json.dumps(event_body(row)).encode()
        producer.send(settings.topic_transactions, body, key=b"%d" % row["customer_id"])
    producer.flush()
    producer.close()


def _window(platform: TrainedPlatform, days: int) -> pd.DataFrame:
    tx = platform.transactions
    end = REPLAY_START + timedelta(days=days)
    return tx[(tx["tx_datetime"] >= REPLAY_START) & (tx["tx_datetime"] < end)]


def test_replay_from_t_serves_the_backfill_features_exactly(
    trained_platform: TrainedPlatform,
) -> None:
    """The parity test: materialize --until T, replay from T, serve; compare with Spark."""
    settings = private_settings(trained_platform)
    materialize_with_progress(
        spark_session(settings), settings, trained_platform.data, until=REPLAY_START
    )
    expected = _window(trained_platform, 4)
    end = REPLAY_START + timedelta(days=4)
    logged = _serve_replay(settings, trained_platform.data, REPLAY_START, end, len(expected))
    served = pd.DataFrame(
        [{"transaction_id": b["transaction_id"], **b["features"]} for b in logged]
    )
    served = served.drop_duplicates("transaction_id").set_index("transaction_id")
    _assert_backfill_features(settings, served, expected)


def _assert_backfill_features(
    settings: Settings, served: pd.DataFrame, expected: pd.DataFrame
) -> None:
    """Every served row (index: transaction id, repeats allowed) has the Spark backfill's
    window features (counts exact, means to 1e-9) and its own amount; every expected
    transaction was served."""
    assert set(served.index) == set(expected["transaction_id"])
    customers, terminals = (
        pd.read_parquet(offline_table_path(settings, name)).set_index("transaction_id")
        for name in ("customer_spending", "terminal_risk")
    )
    windows = [c for c in served.columns if c not in ("amount", "during_weekend", "during_night")]
    offline = customers[[c for c in windows if c.startswith("customer")]].join(
        terminals[[c for c in windows if c.startswith("terminal")]]
    )
    assert len(windows) == 20  # 6 customer and 14 terminal windows
    for name in windows:
        want = offline.loc[served.index, name].to_numpy(dtype=float)
        got = served[name].to_numpy(dtype=float)
        if "count" in name:
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=name)
    amounts = expected.set_index("transaction_id")["tx_amount"]
    np.testing.assert_allclose(served["amount"], amounts.loc[served.index])


def _group_members(settings: Settings) -> int:
    """Members of the workers' consumer group once it is stable (0 before)."""
    client = kafka.admin(settings)
    try:
        group = client.describe_groups([settings.consumer_group])[settings.consumer_group]
    finally:
        client.close()
    return len(group["members"]) if group.get("group_state") == "Stable" else 0


@pytest.mark.usefixtures("restored_environment")
def test_two_workers_share_a_redis_cluster_and_serve_the_backfill_features(
    trained_platform: TrainedPlatform, redis_cluster_service: Settings, tmp_path: Path
) -> None:
    """Scale-out: two `skewless serve` processes (each its own SKEWLESS_WORKER_ID) in one
    group on a 4-partition topic, with the window state and the online rows in a three-node
    Redis Cluster. A replay from T is scored once per transaction after dedupe by id, each
    worker scores part of it, and every logged feature vector equals the backfill's."""
    settings = private_settings(
        trained_platform,
        redis_port=redis_cluster_service.redis_port,
        redis_cluster=True,
        kafka_partitions=4,
        batch_max_events=200,
    )
    materialize_with_progress(
        spark_session(settings), settings, trained_platform.data, until=REPLAY_START
    )
    expected = _window(trained_platform, 3)
    assert len(expected) > 2000
    env = {**os.environ, **feast_environment(settings), "SKEWLESS_METRICS_PORT": "0"}
    command = [sys.executable, "-m", "skewless", "serve", "--idle-exit-seconds", "15"]
    workers = []
    for number in range(2):
        log = (tmp_path / f"worker-{number}.log").open("w")
        workers.append(subprocess.Popen(
            command, env={**env, "SKEWLESS_WORKER_ID": f"worker-{number}"},
            stdout=subprocess.PIPE, stderr=log, text=True,
        ))  # fmt: skip
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().startswith("serve:")  # model loaded, preflight ok
        assert wait_for(lambda: _group_members(settings) == 2, 60, interval_s=0.5)
        replay(
            settings, trained_platform.data, REPLAY_START, REPLAY_START + timedelta(days=3), None
        )
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(timeout=30)
    assert [worker.returncode for worker in workers] == [0, 0], [
        (tmp_path / f"worker-{n}.log").read_text()[-2000:] for n in range(2)
    ]
    scored = [int(re.search(r"scored (\d+)", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert min(scored) > 0, outputs  # both workers took part
    scores = _read_all(settings, settings.topic_scores, len(expected))
    ids = Counter(body["transaction_id"] for _, body in scores)
    assert set(ids) == set(expected["transaction_id"])  # once each after dedupe by id
    assert sum(scored) == len(scores) >= len(expected)
    logged: list[dict[str, Any]] = []
    assert wait_for(lambda: len(_logged_rows(settings, logged)) >= len(scores), 60)
    served = pd.DataFrame(
        [{"transaction_id": b["transaction_id"], **b["features"]} for b in logged]
    ).set_index("transaction_id")
    _assert_backfill_features(settings, served, expected)  # every row, repeats included
    cluster = redis_server.client(settings)
    assert isinstance(cluster, redis.RedisCluster)
    for node in cluster.get_primaries():  # the state is spread over every node
        state_keys = cluster.get_redis_connection(node).scan_iter(
            match=f"{settings.stream_state_prefix}:*", count=1000
        )
        assert next(state_keys, None) is not None, node


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_malformed_events_go_to_the_dead_letter_topic(
    trained_platform: TrainedPlatform, delivery: str
) -> None:
    settings = private_settings(trained_platform, delivery=delivery)
    good = _window(trained_platform, 1).head(6)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    first = event_body(good.iloc[0])
    bad_events = {
        b"this is not json": "not_json",
        b'{"transaction_id": 1, "tx_datetime": "2026-05-25T00:00:00Z"}': "missing_field",
        json.dumps({**first, "customer_id": "seven"}).encode(): "wrong_type",
        json.dumps({**first, "tx_amount": -5.0}).encode(): "negative_amount",
        json.dumps({**first, "tx_datetime": "yesterday"}).encode(): "bad_timestamp",
    }
    sent = 0
    for (_, row), bad in zip(good.iterrows(), [*bad_events, None], strict=False):
        body = {**event_body(row), "unknown_field": "is fine"}
        producer.send(settings.topic_transactions, json.dumps(body).encode(), key=b"1")
        sent += 1
        if bad is not None:
            producer.send(settings.topic_transactions, bad, key=b"1")
            sent += 1
    producer.flush()
    producer.close()
    stats = build_worker(settings).run(max_events=sent, idle_exit_s=10)
    assert stats.dead_letters == len(bad_events)
    assert stats.scored == len(good)
    letters = _read_all(settings, settings.topic_dead_letter, len(bad_events))
    codes = Counter(body["reason_code"] for _, body in letters)
    assert codes == Counter(bad_events.values())
    assert {body["original_text"] for _, body in letters} == {b.decode() for b in bad_events}
    assert all(body["source_topic"] == settings.topic_transactions for _, body in letters)
    scores = _read_all(settings, settings.topic_scores, len(good))
    assert sorted(b["transaction_id"] for _, b in scores) == sorted(good["transaction_id"])


def test_hot_swap_follows_the_alias_and_rollback(trained_platform: TrainedPlatform) -> None:
    """Two versions of a model of this test alone (the platform's champion registered twice,
    so the platform's own registry is left as it was), followed through a promote and a
    rollback by a running worker."""
    name = f"fraud-hot-swap-{uuid.uuid4().hex[:8]}"
    settings = private_settings(trained_platform, champion_poll_s=0.3, model_name=name)
    client = tracking.configure(settings)
    source = f"runs:/{trained_platform.summary.run_id}/{tracking.MODEL_ARTIFACT}"
    original, copy = (str(mlflow.register_model(source, name).version) for _ in range(2))
    registry.promote(client, name, original)
    events = _window(trained_platform, 2)
    parts = [events.iloc[index] for index in np.array_split(np.arange(len(events)), 3)]
    worker = build_worker(settings)
    thread = threading.Thread(target=worker.run, kwargs={"idle_exit_s": 15.0})
    thread.start()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    sent = 0
    try:
        for step, part in enumerate(parts):
            for _, row in part.iterrows():
                producer.send(settings.topic_transactions, json.dumps(event_body(row)).encode())
            producer.flush()
            sent += len(part)
            assert len(_read_all(settings, settings.topic_scores, sent, timeout_s=60)) >= sent
            if step == 0:
                registry.promote(client, name, copy)
                assert wait_for(lambda: worker.core.model.version == copy, 10)
            elif step == 1:
                registry.rollback(client, name)
                assert wait_for(lambda: worker.core.model.version == original, 10)
    finally:
        producer.close()
        worker.stop()
        thread.join(timeout=60)
    version_of = {
        b["transaction_id"]: b["model_version"]
        for _, b in _read_all(settings, settings.topic_scores, len(events))
    }
    for part, version in zip(parts, [original, copy, original], strict=True):
        assert {version_of[i] for i in part["transaction_id"]} == {version}
    assert registry.champion_version(client, name) == original


def test_http_and_stream_give_the_same_score(trained_platform: TrainedPlatform) -> None:
    settings = private_settings(trained_platform)
    events = _window(trained_platform, 1).head(40)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for _, row in events.iterrows():
        producer.send(settings.topic_transactions, json.dumps(event_body(row)).encode())
    producer.flush()
    producer.close()
    build_worker(settings).run(max_events=len(events), idle_exit_s=10)
    stream = {
        b["transaction_id"]: b["score"]
        for _, b in _read_all(settings, settings.topic_scores, len(events))
    }

    server = start_enricher(settings, threshold=0.5)
    port = server.port
    try:
        body = json.dumps([event_body(row) for _, row in events.iterrows()]).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/score",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answers = json.loads(response.read())
        bad = urllib.request.Request(
            f"http://127.0.0.1:{port}/score", data=b'{"transaction_id": 1}', method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(bad, timeout=30)
        assert caught.value.code == 422
    finally:
        stop_enricher(server)
    assert len(answers) == len(events)
    for answer in answers:
        assert answer["score"] == pytest.approx(stream[answer["transaction_id"]], rel=1e-6)


def test_a_worker_serving_its_metrics_exits_0_at_the_end_of_its_run(
    trained_platform: TrainedPlatform,
) -> None:
    """`skewless serve` with its /metrics and /health server on, run to its idle exit: status 0.

    A regression test: the HTTP server's thread (uvicorn on uvloop) outlived the run, and a
    timer of its event loop firing after the interpreter had finalized took the GIL of an
    interpreter that was gone: SIGSEGV (-11) after the final summary, every time.
    """
    settings = private_settings(trained_platform)
    events = _window(trained_platform, 1).head(20)
    _publish(settings, events)
    env = {
        **os.environ,
        **feast_environment(settings),
        "SKEWLESS_METRICS_PORT": str(free_port()),
    }
    run = subprocess.run(
        [sys.executable, "-m", "skewless", "serve", "--idle-exit-seconds", "2"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"serve: consumed {len(events)}, scored {len(events)}," in run.stdout, run.stdout
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_kill_9_mid_stream_and_restart(trained_platform: TrainedPlatform, delivery: str) -> None:
    """A worker killed with SIGKILL mid-stream, then restarted: every transaction is scored.

    The replay runs at a paced rate while the first worker scores, so that the kill lands
    mid-stream. at_least_once: every transaction at least once, duplicates bounded by the
    uncommitted batches. exactly_once: a `read_committed` reader sees exactly one score per
    transaction; the killed worker's open transaction is aborted by the restarted one (same
    transactional id).
    """
    settings = private_settings(trained_platform, batch_max_events=50, delivery=delivery)
    events = _window(trained_platform, 5)
    env = {**os.environ, **feast_environment(settings)}
    command = [sys.executable, "-m", "skewless", "serve"]
    first = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert first.stdout is not None
    first.stdout.readline()  # "serve: ..." once the model is loaded
    end = REPLAY_START + timedelta(days=5)
    publisher = threading.Thread(
        target=replay, args=(settings, trained_platform.data, REPLAY_START, end, 500.0)
    )
    publisher.start()
    try:
        assert _seen(settings, settings.topic_scores, 200, 120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        publisher.join(timeout=120)
    assert len(_read_all(settings, settings.topic_scores, len(events), 3)) < len(events)
    second = subprocess.run(
        [*command, "--idle-exit-seconds", "10"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    scores = _read_all(settings, settings.topic_scores, len(events))
    ids = Counter(body["transaction_id"] for _, body in scores)
    assert set(ids) == set(events["transaction_id"])
    duplicates = sum(count - 1 for count in ids.values())
    if delivery == "exactly_once":
        assert duplicates == 0, ids.most_common(3)
    else:
        assert duplicates <= settings.batch_max_events * settings.kafka_partitions


def test_a_second_worker_with_the_same_worker_id_stops_the_first(
    trained_platform: TrainedPlatform,
) -> None:
    """exactly_once: the newer worker's `init_transactions` fences the older one, which stops
    with a message naming SKEWLESS_WORKER_ID; the newer one scores the rest once."""
    settings = private_settings(trained_platform, delivery="exactly_once", worker_id="twin")
    events = _window(trained_platform, 1).head(60)
    first, rest = events.head(20), events.tail(40)
    older = build_worker(settings)
    stopped: list[BaseException] = []

    def run_older() -> None:
        try:
            older.run(idle_exit_s=60)
        except DeliveryStoppedError as exc:
            stopped.append(exc)

    thread = threading.Thread(target=run_older)
    thread.start()
    try:
        _publish(settings, first)
        assert len(_read_all(settings, settings.topic_scores, len(first))) == len(first)
        newer = build_worker(settings)
        _publish(settings, rest)
        thread.join(timeout=90)
        assert not thread.is_alive()
        [error] = stopped
        assert "SKEWLESS_WORKER_ID" in str(error)
        newer.run(idle_exit_s=10)
    finally:
        older.stop()
        thread.join(timeout=30)
    ids = Counter(b["transaction_id"] for _, b in _read_all(settings, settings.topic_scores, 60))
    assert set(ids) == set(events["transaction_id"])
    assert set(ids.values()) == {1}


def test_a_transaction_that_timed_out_is_waited_out_not_taken_for_a_twin(
    trained_platform: TrainedPlatform,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """exactly_once: the first batch's transaction stays open longer than its timeout (as
    through a Kafka outage that outlasted it, the records sent and the commit waiting). The
    broker aborts it and fences the producer, which kafka-python reports as a twin's fencing.
    The worker does not stop: it makes a new producer, reads the batch again and scores
    every event once."""
    monkeypatch.setattr(delivery, "TRANSACTION_TIMEOUT_MS", 2_000)
    settings = private_settings(trained_platform, delivery="exactly_once", worker_id="slow")
    caplog.set_level(logging.WARNING, logger="serving.delivery")
    events = _window(trained_platform, 1).head(40)
    _publish(settings, events)

    worker = build_worker(settings)
    assert worker.delivery.transaction_timeout_ms == 2_000
    acknowledge = worker.delivery._await_acknowledgements
    held: list[bool] = []

    def held_open(*args: Any) -> None:
        acknowledge(*args)
        if not held:  # the first batch: its records are in, its commit waits
            held.append(True)
            time.sleep(2.0 + 1.0 + 2.0)  # the timeout, the broker's check interval, a margin

    worker.delivery._await_acknowledgements = held_open  # type: ignore[method-assign,assignment]
    stats = worker.run(idle_exit_s=4)  # (a twin's fencing would raise DeliveryStoppedError)
    assert held
    assert any("longer than its timeout" in m for m in caplog.messages), caplog.messages
    assert stats.rewound >= 1
    ids = Counter(b["transaction_id"] for _, b in _read_all(settings, settings.topic_scores, 40))
    assert set(ids) == set(events["transaction_id"])
    assert set(ids.values()) == {1}, ids.most_common(3)


def test_a_batch_read_before_a_rebalance_is_not_scored_twice(
    trained_platform: TrainedPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """exactly_once: a second worker joins while the first computes a batch of both
    partitions. The second reads its partition from the committed offsets and scores it; the
    first batch's offsets go with the group generation it was read in, so the broker refuses
    them (KIP-447) and the first worker reads its partition again from the committed offsets.
    Every event is scored once over the two workers."""
    settings = private_settings(trained_platform, delivery="exactly_once", worker_id="a")
    second_settings = load_settings(**(settings.model_dump() | {"worker_id": "b"}))
    group = settings.consumer_group
    caplog.set_level(logging.INFO, logger="serving.worker")
    events = _window(trained_platform, 1).head(40)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    partitions = Counter(
        producer.send(
            settings.topic_transactions,
            json.dumps(event_body(row)).encode(),
            key=b"%d" % row["customer_id"],
        )
        .get(timeout=30)
        .partition
        for _, row in events.iterrows()
    )
    producer.close()
    assert len(partitions) == 2, partitions  # the batch below holds both partitions

    first = build_worker(settings)
    computing, go_on = threading.Event(), threading.Event()
    score = first.core.score

    def held_score(*args: Any, **kwargs: Any) -> Any:
        computing.set()
        assert go_on.wait(120)
        return score(*args, **kwargs)

    first.core.score = held_score  # type: ignore[method-assign]
    second = build_worker(second_settings)
    threads = [
        threading.Thread(target=first.run, kwargs={"idle_exit_s": 15}),
        threading.Thread(target=second.run, kwargs={"idle_exit_s": 15}),
    ]
    threads[0].start()
    try:
        assert computing.wait(60)  # the first batch is read and held in the compute stage
        assert len(first.consumer.assignment()) == 2
        threads[1].start()
        assert wait_for(
            lambda: len(first.consumer.assignment()) == len(second.consumer.assignment()) == 1, 60
        )
        [moved] = second.consumer.assignment()
        assert wait_for(lambda: second.stats.scored == partitions[moved.partition], 60)
    finally:
        go_on.set()
        for thread in threads:
            if thread.ident is not None:  # (started)
                thread.join(timeout=120)
        first.stop()
        second.stop()
    ids = Counter(b["transaction_id"] for _, b in _read_all(settings, settings.topic_scores, 40))
    assert set(ids) == set(events["transaction_id"])
    assert set(ids.values()) == {1}, ids.most_common(3)
    assert first.stats.rewound >= 1  # the held batch's offsets were refused: read again
    generations = [m for m in caplog.messages if m.startswith(f"consumer group {group}:")]
    assert len(generations) >= 3, generations  # the first worker's two, the second's one
    assert first.stats.scored + second.stats.scored == len(events)


def test_events_older_than_max_lag_are_scored_cheaply_and_flagged(
    trained_platform: TrainedPlatform,
) -> None:
    """Behind by more than `max_lag_s`: scored without window reads, flagged, state kept."""
    settings = private_settings(
        trained_platform, max_lag_s=0.5, stream_state_prefix=f"test:{uuid.uuid4().hex}"
    )
    events = _window(trained_platform, 1).head(300)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for _, row in events.iterrows():
        key = str(int(row["customer_id"])).encode()
        last = producer.send(
            settings.topic_transactions, json.dumps(event_body(row)).encode(), key=key
        )
    producer.flush()
    producer.close()
    entered_ms = last.get(timeout=10).timestamp
    lag_ms = 1000 * (settings.max_lag_s or 0)
    assert wait_for(lambda: time.time() * 1000 - entered_ms > lag_ms, 10, interval_s=0.05)
    worker = build_worker(settings)
    stats = worker.run(max_events=len(events), idle_exit_s=10)
    assert stats.scored == len(events)
    scores = [body for _, body in _read_all(settings, settings.topic_scores, len(events))]
    windows = {name for d in worker.core.state.aggregations for name in d.declaration.feature_names}
    assert all(body["degraded"] for body in scores)
    assert all(set(body["defaulted_features"]) == windows for body in scores)
    # The state still took every event: scored normally now, each sees itself in its window.
    again = worker.core.state.score_features(events.drop(columns=["tx_fraud"]).tail(20))
    customers = next(d for d in worker.core.state.aggregations if not d.fed_by_labels)
    count_1d = customers.declaration.feature_names.index(customers.declaration.count_features[0])
    assert (again[customers.declaration.name][:, count_1d] >= 1).all()
