"""Records that used to stop the worker for good: each is now a dead letter, the stream goes on.

Every test puts its crafted records among ordinary transactions of the trained platform on a
private topic, runs a real worker against the session's Kafka and Redis (with a private state
prefix), and checks the dead-letter topic, the scores and the committed offsets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pandas as pd
import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError, KafkaTimeoutError

from serving.delivery import Delivery, DeliveryError
from serving.events import Label, encode_label, format_timestamp
from serving.metrics import ScoringMetrics
from serving.scoring import ScoringCore, build_core
from serving.worker import ISOLATION_LIMIT, Worker, build_worker, fault_dependency
from skewless.services.process import wait_for
from skewless.settings import Settings
from tests.conftest import (
    TrainedPlatform,
    event_body,
    private_settings,
    start_enricher,
    stop_enricher,
)
from tests.integration.test_worker import _read_all, _window

pytestmark = pytest.mark.integration

BROKER_MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Bad:
    """A crafted record and the reason code its dead letter must carry."""

    value: bytes | None
    code: str


def _good(platform: TrainedPlatform, count: int) -> pd.DataFrame:
    return _window(platform, 1).head(count)


def _with_time(row: pd.Series, moment: datetime, **changes: Any) -> bytes:
    body = {**event_body(row), "tx_datetime": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **changes}
    return json.dumps(body).encode()


def _label_of(row: pd.Series, after: timedelta) -> bytes:
    """The label (not fraud) of the transaction `row`, known `after` its time."""
    when = row["tx_datetime"].to_pydatetime()
    return encode_label(
        Label(
            transaction_id=int(row["transaction_id"]),
            customer_id=int(row["customer_id"]),
            terminal_id=int(row["terminal_id"]),
            tx_datetime=when,
            tx_fraud=0,
            label_time=when + after,
        )
    )


def _settings(platform: TrainedPlatform, delivery: str = "at_least_once") -> Settings:
    return private_settings(
        platform, stream_state_prefix=f"test:{uuid.uuid4().hex}", delivery=delivery
    )


def _produce(
    settings: Settings,
    values: Sequence[bytes | None],
    *,
    topic: str | None = None,
    compression: str | None = None,
) -> None:
    """Send `values` in order to one partition (one key), so that a worker reads them together."""
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        compression_type=compression,
        max_request_size=2 * BROKER_MAX_MESSAGE_BYTES,
    )
    try:
        for value in values:
            producer.send(topic or settings.topic_transactions, value, key=b"1")
        producer.flush()
    finally:
        producer.close()


def _committed(settings: Settings) -> int:
    """Offsets the worker's group committed on the transactions topic, over its partitions."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.consumer_group
    )
    try:
        partitions = consumer.partitions_for_topic(settings.topic_transactions) or set()
        tps = [TopicPartition(settings.topic_transactions, p) for p in partitions]
        return sum(consumer.committed(tp) or 0 for tp in tps)
    finally:
        consumer.close()


def _dead_letters(settings: Settings, expected: int) -> list[dict[str, Any]]:
    return [body for _, body in _read_all(settings, settings.topic_dead_letter, expected)]


def _scored_ids(settings: Settings, expected: int) -> list[int]:
    scores = _read_all(settings, settings.topic_scores, expected)
    return [body["transaction_id"] for _, body in scores]


def _run_batch(platform: TrainedPlatform, bad: Bad) -> tuple[Settings, pd.DataFrame]:
    """Six ordinary events with `bad` in the middle, through one bounded worker run."""
    settings = _settings(platform)
    good = _good(platform, 6)
    values: list[bytes | None] = [
        json.dumps(event_body(row)).encode() for _, row in good.iterrows()
    ]
    values.insert(3, bad.value)
    _produce(settings, values)
    stats = build_worker(settings).run(max_events=len(values), idle_exit_s=10)
    assert (stats.scored, stats.dead_letters) == (len(good), 1)
    return settings, good


def _tombstone(row: pd.Series) -> Bad:
    return Bad(None, "tombstone")


def _amount_of_400_digits(row: pd.Series) -> Bad:
    body = {**event_body(row), "tx_amount": int("9" * 400)}
    return Bad(json.dumps(body).encode(), "amount_too_large")


def _garbage_of_900_kb(row: pd.Series) -> Bad:
    return Bad(bytes(range(256)) * (900 * 4), "not_utf8")


def _dated_2099(row: pd.Series) -> Bad:
    return Bad(_with_time(row, datetime(2099, 1, 1, tzinfo=UTC)), "too_far_ahead")


def _dated_1969(row: pd.Series) -> Bad:
    return Bad(_with_time(row, datetime(1969, 12, 31, 23, tzinfo=UTC)), "too_late")


def _absurd_finite_amount(row: pd.Series) -> Bad:
    return Bad(json.dumps({**event_body(row), "tx_amount": 1e308}).encode(), "amount_too_large")


CRASHES: dict[str, Callable[[pd.Series], Bad]] = {
    "tombstone": _tombstone,
    "amount_of_400_digits": _amount_of_400_digits,
    "garbage_of_900_kb": _garbage_of_900_kb,
    "dated_2099": _dated_2099,
    "dated_1969": _dated_1969,
    "amount_1e308": _absurd_finite_amount,
}


@pytest.mark.parametrize("crash", list(CRASHES))
def test_a_record_that_stopped_the_worker_is_a_dead_letter_and_the_batch_is_committed(
    trained_platform: TrainedPlatform, crash: str
) -> None:
    bad = CRASHES[crash](_good(trained_platform, 1).iloc[0])
    settings, good = _run_batch(trained_platform, bad)
    [letter] = _dead_letters(settings, 1)
    assert letter["reason_code"] == bad.code, letter["reason"]
    assert letter["source_offset"] == 3
    original = bad.value or b""
    assert letter["original_length"] == len(original)
    assert sorted(_scored_ids(settings, len(good))) == sorted(good["transaction_id"])
    assert _committed(settings) == len(good) + 1


def test_a_900_kb_dead_letter_is_cut_and_still_identifies_its_original(
    trained_platform: TrainedPlatform,
) -> None:
    garbage = bytes(range(256)) * (900 * 4)
    settings, _ = _run_batch(trained_platform, Bad(garbage, "not_utf8"))
    consumer = KafkaConsumer(
        settings.topic_dead_letter,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        [record] = list(consumer)
    finally:
        consumer.close()
    assert len(record.value) < BROKER_MAX_MESSAGE_BYTES
    body = json.loads(record.value)
    assert body["original_truncated"] is True
    assert body["original_sha256"] == hashlib.sha256(garbage).hexdigest()


def test_an_absurd_amount_leaves_the_other_customers_scores_as_without_it(
    trained_platform: TrainedPlatform,
) -> None:
    good = _good(trained_platform, 6)
    poisoned, _ = _run_batch(trained_platform, _absurd_finite_amount(good.iloc[0]))
    clean = _settings(trained_platform)
    _produce(clean, [json.dumps(event_body(row)).encode() for _, row in good.iterrows()])
    build_worker(clean).run(max_events=len(good), idle_exit_s=10)

    def scores(settings: Settings) -> dict[int, float]:
        bodies = _read_all(settings, settings.topic_scores, len(good))
        return {body["transaction_id"]: body["score"] for _, body in bodies}

    with_poison, without = scores(poisoned), scores(clean)
    assert set(with_poison) == set(good["transaction_id"])
    assert with_poison == without
    assert all(score is not None for score in with_poison.values())


def test_an_april_event_among_october_ones_is_too_late(trained_platform: TrainedPlatform) -> None:
    settings = _settings(trained_platform)
    rows = [row for _, row in _good(trained_platform, 6).iterrows()]
    october = datetime(2026, 10, 1, tzinfo=UTC)
    values: list[bytes | None] = [
        _with_time(row, october + timedelta(minutes=index)) for index, row in enumerate(rows)
    ]
    values.insert(2, _with_time(rows[0], datetime(2026, 4, 1, tzinfo=UTC), transaction_id=1))
    _produce(settings, values)
    stats = build_worker(settings).run(max_events=len(values), idle_exit_s=10)
    assert (stats.scored, stats.dead_letters) == (len(rows), 1)
    [letter] = _dead_letters(settings, 1)
    assert letter["reason_code"] == "too_late"
    assert letter["source_offset"] == 2


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_a_batch_with_events_of_2099_and_1970_scores_the_others_and_keeps_running(
    trained_platform: TrainedPlatform, delivery: str
) -> None:
    """Issue 10's done-when: both dead-lettered with their reason, the others scored, and the
    worker, still the same one, goes on scoring the next batch."""
    settings = _settings(trained_platform, delivery)
    rows = [row for _, row in _window(trained_platform, 1).head(12).iterrows()]
    first = [json.dumps(event_body(row)).encode() for row in rows[:8]]
    first.insert(2, _with_time(rows[0], datetime(2099, 1, 1, tzinfo=UTC), transaction_id=-1))
    first.insert(6, _with_time(rows[1], datetime(1970, 1, 1, tzinfo=UTC), transaction_id=-2))
    _produce(settings, first)
    worker = build_worker(settings)
    thread = threading.Thread(target=worker.run, kwargs={"idle_exit_s": None}, daemon=True)
    thread.start()
    try:
        letters = _dead_letters(settings, 2)
        assert Counter(letter["reason_code"] for letter in letters) == {
            "too_far_ahead": 1,
            "too_late": 1,
        }
        assert {letter["source_offset"] for letter in letters} == {2, 6}
        first_ids = [int(row["transaction_id"]) for row in rows[:8]]
        assert sorted(_scored_ids(settings, 8)) == sorted(first_ids)
        assert wait_for(lambda: _committed(settings) == len(first), 30)
        assert thread.is_alive()
        _produce(settings, [json.dumps(event_body(row)).encode() for row in rows[8:]])
        assert wait_for(lambda: len(_scored_ids(settings, 12)) >= 12, 60)
        assert sorted(_scored_ids(settings, 12)) == sorted(int(r["transaction_id"]) for r in rows)
        assert thread.is_alive()
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()


def _set_topic_config(settings: Settings, topic: str, name: str, value: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={name: value})
        admin.alter_configs([resource], incremental=True)
    finally:
        admin.close()


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_scores_the_broker_refuses_are_read_again_until_it_takes_them(
    trained_platform: TrainedPlatform, delivery: str
) -> None:
    """While the scores topic refuses every record (its `max.message.bytes` shrunk under a
    score's size), the batch is not committed and is read again; once the topic takes them
    again, every transaction is scored and the offsets are committed. The worker stays the
    same one throughout; exactly_once: each transaction is scored once."""
    settings = _settings(trained_platform, delivery)
    rows = [row for _, row in _good(trained_platform, 10).iterrows()]
    _set_topic_config(settings, settings.topic_scores, "max.message.bytes", "100")
    _produce(settings, [json.dumps(event_body(row)).encode() for row in rows])
    worker = build_worker(settings)
    thread = threading.Thread(target=worker.run, kwargs={"idle_exit_s": None}, daemon=True)
    thread.start()

    def rewound() -> float:
        return worker.metrics.registry.get_sample_value("skewless_batches_rewound_total") or 0.0

    try:
        assert wait_for(lambda: rewound() >= 2, 120)
        assert _committed(settings) == 0
        _set_topic_config(settings, settings.topic_scores, "max.message.bytes", "1048588")
        assert wait_for(lambda: _committed(settings) == len(rows), 120)
        assert thread.is_alive()
    finally:
        worker.stop()
        thread.join(timeout=60)
    scored = Counter(_scored_ids(settings, len(rows)))
    assert sorted(scored) == sorted(int(row["transaction_id"]) for row in rows)
    if delivery == "exactly_once":
        assert set(scored.values()) == {1}


def test_a_commit_whose_answer_was_lost_is_not_scored_again(
    trained_platform: TrainedPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exactly_once: a transaction the broker committed but whose answer the worker lost (the
    broker killed between the two) fails the batch's delivery. The worker reads on from the
    offsets its group committed, not from the batch's first ones: its transactions are scored
    once. Before, the batch was scored again (a fault-suite run saw 3 duplicates after a broker
    `kill -9`)."""
    settings = private_settings(
        trained_platform,
        stream_state_prefix=f"test:{uuid.uuid4().hex}",
        delivery="exactly_once",
        batch_max_events=5,
    )
    good = _good(trained_platform, 30)
    _produce(settings, [json.dumps(event_body(r)).encode() for _, r in good.iterrows()])
    commit = KafkaProducer.commit_transaction
    lost: list[int] = []

    def commit_and_lose_the_answer(producer: KafkaProducer) -> None:
        commit(producer)
        if len(lost) < 2:  # the second commit's answer (the first may be a lone event's)
            lost.append(1)
            if len(lost) > 1:
                raise KafkaError("Could not execute transactional request: connection lost")

    monkeypatch.setattr(KafkaProducer, "commit_transaction", commit_and_lose_the_answer)
    metrics = ScoringMetrics()
    worker = Worker(settings, build_core(settings), metrics)
    worker.run(idle_exit_s=10)
    assert len(lost) == 2
    assert (metrics.registry.get_sample_value("skewless_batches_rewound_total") or 0) >= 1
    scored = Counter(_scored_ids(settings, len(good)))
    assert sorted(scored) == sorted(int(tx) for tx in good["transaction_id"])
    assert set(scored.values()) == {1}, scored.most_common(3)
    assert _committed(settings) == len(good)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_transactions_and_labels_are_read(
    trained_platform: TrainedPlatform, codec: str, delivery: str
) -> None:
    settings = _settings(trained_platform, delivery)
    good = _good(trained_platform, 20)
    labels = [
        encode_label(
            Label(
                int(row["transaction_id"]),
                int(row["customer_id"]),
                int(row["terminal_id"]),
                row["tx_datetime"].to_pydatetime(),
                int(row["tx_fraud"]),
                row["tx_datetime"].to_pydatetime() + timedelta(days=7),
            )
        )
        for _, row in good.iterrows()
    ]
    _produce(settings, list(labels), topic=settings.topic_labels, compression=codec)
    values = [json.dumps(event_body(row)).encode() for _, row in good.iterrows()]
    _produce(settings, list(values), compression=codec)
    stats = build_worker(settings).run(max_events=len(values), idle_exit_s=10)
    assert (stats.scored, stats.dead_letters, stats.labels) == (len(good), 0, len(labels))
    assert sorted(_scored_ids(settings, len(good))) == sorted(good["transaction_id"])


def test_the_http_door_answers_422_with_the_reason_for_the_same_records(
    trained_platform: TrainedPlatform,
) -> None:
    settings = _settings(trained_platform)
    row = _good(trained_platform, 1).iloc[0]
    server = start_enricher(settings)
    url = f"http://127.0.0.1:{server.port}/score"

    def post(body: bytes) -> tuple[int, Any]:
        request = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    cases = {
        json.dumps({**event_body(row), "tx_amount": 1e308}).encode(): "amount_too_large",
        json.dumps({**event_body(row), "tx_amount": int("9" * 400)}).encode(): "amount_too_large",
        _with_time(row, datetime(2099, 1, 1, tzinfo=UTC)): "too_far_ahead",
    }
    try:
        for body, code in cases.items():
            status, answer = post(body)
            assert status == 422, answer
            [error] = answer["errors"]
            assert error["reason"].startswith(code + ": ")
        status, answer = post(b"[" * 100_000)
        assert status == 400
        assert answer["error"].startswith("not JSON")
        status, answer = post(json.dumps(event_body(row)).encode())
        assert status == 200
        assert 0.0 <= answer["score"] <= 1.0
    finally:
        stop_enricher(server)


def test_malformed_labels_are_dead_letters_with_their_reason(
    trained_platform: TrainedPlatform,
) -> None:
    settings = _settings(trained_platform)
    good = _good(trained_platform, 4)
    label = _label_of(good.iloc[0], after=timedelta(days=7))
    _produce(settings, [b"{not json", None, label], topic=settings.topic_labels)
    _produce(settings, [json.dumps(event_body(r)).encode() for _, r in good.iterrows()])
    stats = build_worker(settings).run(max_events=len(good), idle_exit_s=10)
    assert (stats.scored, stats.labels, stats.dead_letters) == (len(good), 1, 2)
    letters = _dead_letters(settings, 2)
    assert {letter["source_topic"] for letter in letters} == {settings.topic_labels}
    assert sorted(letter["reason"].split(":")[0] for letter in letters) == [
        "not_json",
        "tombstone",
    ]


def test_labels_not_known_yet_or_of_no_transaction_are_dead_letters(
    trained_platform: TrainedPlatform,
) -> None:
    """A label published before its own label_time, and one naming a transaction its terminal
    never had (dated before what the state keeps), go to the dead-letter topic with their
    reasons; the label of a scored transaction counts; the worker goes on."""
    settings = _settings(trained_platform)
    good = _good(trained_platform, 6)
    first, later = good.iloc[:3], good.iloc[3:]
    _produce(settings, [json.dumps(event_body(r)).encode() for _, r in first.iterrows()])
    assert build_worker(settings).run(max_events=len(first), idle_exit_s=10).scored == len(first)

    row = first.iloc[0]
    scored_at = row["tx_datetime"].to_pydatetime()

    def label(transaction_id: int, tx_datetime: datetime, label_time: datetime) -> bytes:
        return encode_label(
            Label(
                transaction_id=transaction_id,
                customer_id=int(row["customer_id"]),
                terminal_id=int(row["terminal_id"]),
                tx_datetime=tx_datetime,
                tx_fraud=1,
                label_time=label_time,
            )
        )

    _produce(
        settings,
        [
            label(int(row["transaction_id"]), scored_at, scored_at + timedelta(days=7)),
            label(int(row["transaction_id"]), scored_at, datetime(2099, 1, 1, tzinfo=UTC)),
            label(10**12, scored_at - timedelta(days=60), scored_at - timedelta(days=53)),
        ],
        topic=settings.topic_labels,
    )
    _produce(settings, [json.dumps(event_body(r)).encode() for _, r in later.iterrows()])
    stats = build_worker(settings).run(max_events=len(later), idle_exit_s=10)
    assert (stats.scored, stats.dead_letters) == (len(later), 2)
    letters = {letter["reason_code"]: letter for letter in _dead_letters(settings, 2)}
    assert set(letters) == {"label_before_label_time", "label_unknown_transaction"}
    unknown = letters["label_unknown_transaction"]
    assert json.loads(base64.b64decode(unknown["original_b64"])) == {
        "transaction_id": 10**12,
        "terminal_id": int(row["terminal_id"]),
        "tx_datetime": format_timestamp(scored_at - timedelta(days=60)),
        "tx_fraud": 1,
    }
    assert "2099-01-01" in letters["label_before_label_time"]["reason"]


class _Poisoned(ScoringCore):
    """The platform's core, failing on the transactions of `poison` (all when it is None)."""

    def __init__(self, core: ScoringCore, poison: set[int] | None) -> None:
        super().__init__(core.state, core.watcher)
        self.poison = poison

    def score(self, transactions: Any, degraded: Any = None) -> Any:
        ids = set(transactions["transaction_id"].tolist())
        if self.poison is None or ids & self.poison:
            raise ValueError(f"cannot score {sorted(ids)[:3]}")
        return super().score(transactions, degraded)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_an_event_that_fails_alone_is_isolated_and_the_rest_scored_once(
    trained_platform: TrainedPlatform, delivery: str
) -> None:
    settings = _settings(trained_platform, delivery)
    good = _good(trained_platform, 40)
    poison = int(good.iloc[17]["transaction_id"])
    _produce(settings, [json.dumps(event_body(r)).encode() for _, r in good.iterrows()])
    core = build_core(settings)
    worker = Worker(settings, _Poisoned(core, {poison}), ScoringMetrics())
    stats = worker.run(max_events=len(good), idle_exit_s=10)
    assert (stats.consumed, stats.scored, stats.dead_letters) == (len(good), len(good) - 1, 1)
    [letter] = _dead_letters(settings, 1)
    assert letter["reason"].startswith("processing_failed: ValueError: cannot score")
    assert json.loads(base64.b64decode(letter["original_b64"]))["transaction_id"] == poison
    ids = _scored_ids(settings, len(good) - 1)
    assert sorted(ids) == sorted(set(good["transaction_id"]) - {poison})  # each once
    assert _committed(settings) == len(good)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_a_batch_being_isolated_while_kafka_is_away_is_read_again_not_skipped(
    trained_platform: TrainedPlatform, delivery: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch fails for one of its events; the producer that isolating it needs cannot be
    made twice running (Kafka away longer than the client's bootstrap timeout). The worker
    waits that out and reads the batch again: every other event is scored, the poisoned one
    dead-lettered, every offset committed. Before, the second failure skipped the rewind's
    seek and the worker read on past the batch: none of the 40 events was scored or
    dead-lettered."""
    settings = _settings(trained_platform, delivery)
    good = _good(trained_platform, 40)
    poison = int(good.iloc[17]["transaction_id"])
    _produce(settings, [json.dumps(event_body(r)).encode() for _, r in good.iterrows()])
    worker = Worker(settings, _Poisoned(build_core(settings), {poison}), ScoringMetrics())
    made: list[int] = []

    def producer(**config: Any) -> KafkaProducer:
        made.append(1)
        if len(made) <= 2:  # (what kafka-python raises after 30 s without a broker)
            raise KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9092")
        return KafkaProducer(**config)

    monkeypatch.setattr("serving.delivery.KafkaProducer", producer)
    stats = worker.run(idle_exit_s=10)
    assert (stats.scored, stats.dead_letters) == (len(good) - 1, 1)
    [letter] = _dead_letters(settings, 1)
    assert json.loads(base64.b64decode(letter["original_b64"]))["transaction_id"] == poison
    scored = Counter(_scored_ids(settings, len(good) - 1))
    assert sorted(scored) == sorted(set(good["transaction_id"]) - {poison})
    if delivery == "exactly_once":
        assert set(scored.values()) == {1}
    assert _committed(settings) == len(good)
    assert len(made) >= 3


def test_a_scoring_that_fails_for_every_event_is_waited_out_not_dead_lettered(
    trained_platform: TrainedPlatform,
) -> None:
    settings = _settings(trained_platform)
    good = _good(trained_platform, 20)
    _produce(settings, [json.dumps(event_body(r)).encode() for _, r in good.iterrows()])
    metrics = ScoringMetrics()
    worker = Worker(settings, _Poisoned(build_core(settings), None), metrics)
    thread = threading.Thread(target=worker.run, kwargs={"idle_exit_s": None}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: "scoring" in metrics.faults, 60)
        assert metrics.health()["status"] == "degraded"
        assert thread.is_alive()
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert len(_dead_letters(settings, 0)) <= ISOLATION_LIMIT
    assert _committed(settings) <= ISOLATION_LIMIT  # the rest is read again, not lost


def test_a_failure_inside_the_delivery_stage_reads_the_batch_again(
    kafka_service: Settings,
) -> None:
    """Whatever fails in the delivery stage's thread surfaces when the batch is settled as a
    `DeliveryError`, which the worker waits out and answers by reading the batch again: a
    batch handed over is committed or read again, never skipped."""
    settings = kafka_service
    group = f"stage-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    delivery = Delivery(settings, consumer, client_id="stage-test")
    try:
        # (a value the producer cannot serialize: a failure that is neither Kafka's nor ours)
        membership = consumer.group_metadata()
        delivery.hand_over([(settings.topic_scores, None, cast(bytes, 12345))], {}, membership)
        with pytest.raises(DeliveryError, match="delivery stage failed") as failure:
            delivery.settle()
        assert fault_dependency(failure.value) == "kafka"
        assert not delivery.handed
        delivery.deliver([(settings.topic_scores, b"1", b"{}")], {}, membership)  # and it goes on
    finally:
        delivery.close()
        consumer.close()


def test_the_online_rows_are_written_before_the_batch_s_records_or_it_is_read_again(
    kafka_service: Settings,
) -> None:
    """The delivery stage writes a batch's online rows (`before`) ahead of its records, so a
    reader that sees a score finds them; when that write fails, nothing of the batch is
    produced and the failure is Redis's fault to wait out, the batch read again."""
    settings = kafka_service
    group = f"stage-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    watcher = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    partitions = [
        TopicPartition(settings.topic_scores, p)
        for p in watcher.partitions_for_topic(settings.topic_scores) or ()
    ]

    def records() -> int:
        return sum(watcher.end_offsets(partitions).values())

    def unreachable() -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1")

    delivery = Delivery(settings, consumer, client_id="stage-test")
    try:
        start = records()
        membership = consumer.group_metadata()
        seen: list[int] = []
        delivery.hand_over(
            [(settings.topic_scores, b"1", b"{}")],
            {},
            membership,
            before=lambda: seen.append(records()),
        )
        delivery.settle(asynchronous=False)
        assert seen == [start]
        assert records() == start + 1

        delivery.hand_over(
            [(settings.topic_scores, b"2", b"{}")], {}, membership, before=unreachable
        )
        with pytest.raises(DeliveryError, match="before its records") as failure:
            delivery.settle()
        assert fault_dependency(failure.value) == "redis"
        delivery.abort()
        assert records() == start + 1
    finally:
        delivery.close()
        consumer.close()
        watcher.close()


@pytest.mark.parametrize("poisoned", [False, True], ids=["computed", "isolated"])
def test_labels_read_while_a_batch_is_computed_are_not_committed_with_it(
    trained_platform: TrainedPlatform, poisoned: bool
) -> None:
    """The labels the worker reads while a batch is in the compute stage go into the state only
    after it; so the batch, and the halves it is bisected into when an event fails alone, commit
    the label positions of before them. Committing past labels not yet in the state would lose
    them to a crash."""
    settings = _settings(trained_platform)
    good = _good(trained_platform, 8)
    _produce(settings, [json.dumps(event_body(r)).encode() for _, r in good.iterrows()])
    core = build_core(settings)
    poison = {int(good.iloc[5]["transaction_id"])} if poisoned else set()
    worker = Worker(settings, _Poisoned(core, poison), ScoringMetrics())
    try:
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while len(records) < len(good) and time.monotonic() < deadline:
            records += [r for rs in worker.consumer.poll(timeout_ms=500).values() for r in rs]
        assert len(records) == len(good)
        worker._store_labels(worker.labels.catch_up())
        stored = worker.labels.positions()
        worker._start_isolating(records, worker.consumer.group_metadata())
        ahead = [_label_of(row, after=timedelta(0)) for _, row in good.iterrows()]
        _produce(settings, ahead, topic=settings.topic_labels)
        assert len(worker.labels.catch_up().values) == len(ahead)  # read ahead, not stored
        worker._finish_isolating()
        worker._settle()
        assert worker._label_positions == stored
        assert worker.stats.scored == len(good) - len(poison)
    finally:
        worker.close()
    group = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=f"{settings.consumer_group}-labels"
    )
    try:
        committed = {tp: group.committed(tp) or 0 for tp in stored}
    finally:
        group.close()
    assert committed == stored  # the labels read ahead are read again by the next worker
