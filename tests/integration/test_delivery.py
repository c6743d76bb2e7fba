"""The delivery stage against a broker of its own, killed with SIGKILL and restarted."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from serving import delivery as delivery_module
from serving.delivery import Delivery, DeliveryError, Offsets, Outgoing
from skewless.services import kafka
from skewless.services.process import ManagedProcess, wait_for
from skewless.settings import Settings, load_settings
from tests.conftest import private_servers

pytestmark = pytest.mark.integration

SETTLED_WITHIN_S = 30
"""A batch handed over while the broker was down has an outcome this soon after it is back
(with kafka-python's default delivery timeout, about 100 s)."""


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[Settings]:
    """A broker of the test alone (it gets killed), on free ports."""
    settings = load_settings(
        runtime_dir=tmp_path,
        data_dir=tmp_path / "data",
        delivery="exactly_once",
        worker_id="outage",
        **private_servers(),
    )
    kafka.start(settings)
    try:
        kafka.ensure_topics(settings)
        yield settings
    finally:
        kafka.stop(settings)


def _committed_values(settings: Settings) -> list[bytes]:
    consumer = KafkaConsumer(
        settings.topic_scores,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        consumer_timeout_ms=5_000,
    )
    try:
        return [record.value for record in consumer]
    finally:
        consumer.close()


def _delivery(settings: Settings) -> tuple[Delivery, KafkaConsumer, TopicPartition]:
    """A delivery stage whose consumer has read from 20 records of the input topic."""
    source = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    for number in range(20):
        source.send(settings.topic_transactions, b"%d" % number, partition=0)
    source.flush()
    source.close()
    consumer = KafkaConsumer(
        settings.topic_transactions,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    assert wait_for(lambda: bool(consumer.poll(timeout_ms=1_000)), 30)
    delivery = Delivery(settings, consumer, client_id="outage-test")
    return delivery, consumer, TopicPartition(settings.topic_transactions, 0)


def _kill_broker(settings: Settings) -> None:
    pid = ManagedProcess("kafka", settings.runtime_dir).pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    assert wait_for(lambda: ManagedProcess("kafka", settings.runtime_dir).pid() is None, 30)


def test_a_transaction_begun_while_the_broker_is_down_is_settled_soon_after_it_is_back(
    own_kafka: Settings,
) -> None:
    """exactly_once: a batch is handed over just after the broker was killed, so its
    transaction's AddPartitionsToTxn request meets no coordinator. kafka-python 3.0.12 drops
    that request (its sender drops it after the failed connection), and the batch's records
    wait, never sent, until the producer's delivery timeout, even once the broker is back.
    With kafka-python's default (120 s from the hand-over) the batch failed about 100 s
    after the broker was back; with `DELIVERY_TIMEOUT_MS` (30 s) it fails within
    `SETTLED_WITHIN_S` (or is committed, should the request get through), and the batch
    delivered again by the next producer is committed once."""
    settings = own_kafka
    delivery, consumer, read = _delivery(settings)
    try:
        first: list[Outgoing] = [(settings.topic_scores, b"k", b"first")]
        delivery.deliver(first, {read: OffsetAndMetadata(10, "", -1)}, consumer.group_metadata())
        _kill_broker(settings)
        second: list[Outgoing] = [
            (settings.topic_scores, b"k", b"second-%d" % n) for n in range(10)
        ]
        second_offsets = {read: OffsetAndMetadata(20, "", -1)}
        delivery.hand_over(second, second_offsets, consumer.group_metadata())
        time.sleep(3)
        kafka.start(settings)
        back = time.monotonic()
        try:
            delivery.settle(asynchronous=False)
            failed = False
        except DeliveryError:  # (the records waited for a request that was dropped)
            failed = True
        waited_s = time.monotonic() - back
        assert waited_s < SETTLED_WITHIN_S, waited_s
        if failed:
            assert wait_for(lambda: _abort(delivery) is None, 90)
            delivery.deliver(second, second_offsets, consumer.group_metadata())
    finally:
        delivery.close()
        consumer.close()
    values = _committed_values(settings)
    assert sorted(values) == sorted([b"first"] + [value for _, _, value in second])


def test_a_batch_that_failed_while_the_broker_is_down_is_dropped_without_waiting_for_it(
    own_kafka: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exactly_once: a batch's records are acknowledged, then the broker is killed and its
    commit fails (as when its answer is lost). `abort` is called while the broker is down.
    Before, it called kafka-python's `abort_transaction`, whose request kafka-python 3.0.12
    drops when the coordinator cannot be reached, and which has no timeout: it waited
    forever, also once the broker was back. Now `abort` waits for it at most
    `CLOSE_TIMEOUT_S`, closes the producer and returns (`DeliveryError` while no new
    producer can be made); once the broker is back, the next
    producer's `init_transactions` aborts the open transaction, and the batch delivered again
    is committed once (the aborted one's records are never read). (The test waits 1 s for the
    abort and 5 s for a broker to bootstrap from, so that it is short.)"""
    monkeypatch.setattr(delivery_module, "CLOSE_TIMEOUT_S", 1.0)
    settings = own_kafka
    delivery, consumer, read = _delivery(settings)
    delivery._config["bootstrap_timeout_ms"] = 5_000

    def kill_and_fail() -> None:
        _kill_broker(settings)
        raise KafkaError("Could not execute transactional request: connection lost")

    try:
        second, second_offsets, replaced = _first_delivered_then_second_handed_over(
            settings, delivery, consumer, read, monkeypatch, kill_and_fail
        )
        with pytest.raises(DeliveryError):
            delivery.settle(asynchronous=False)
        assert replaced

        outcome: list[DeliveryError | None] = []
        aborting = threading.Thread(target=lambda: outcome.append(_abort(delivery)), daemon=True)
        aborting.start()
        aborting.join(timeout=120)
        assert not aborting.is_alive(), "abort still waits for the broker"
        assert isinstance(outcome[0], DeliveryError)  # (no new producer while it is down)

        kafka.start(settings)
        assert wait_for(lambda: _abort(delivery) is None, 90)
        delivery.deliver(second, second_offsets, consumer.group_metadata())
    finally:
        delivery.close()
        consumer.close()
    assert sorted(_committed_values(settings)) == [b"first", b"second"]


def test_a_commit_that_gets_no_answer_is_given_up_and_delivered_again(
    own_kafka: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exactly_once: a batch's commit never returns, as when kafka-python drops its request
    (its calls have no timeout; the broker here stays up, the first `commit_transaction`
    is held). After `COMMIT_TIMEOUT_S` the batch counts as not committed; the next producer
    aborts its transaction, and the batch delivered again is committed once."""
    monkeypatch.setattr(delivery_module, "COMMIT_TIMEOUT_S", 2.0)
    settings = own_kafka
    delivery, consumer, read = _delivery(settings)
    release = threading.Event()
    try:
        second, second_offsets, replaced = _first_delivered_then_second_handed_over(
            settings, delivery, consumer, read, monkeypatch, release.wait
        )
        with pytest.raises(DeliveryError, match="no answer from Kafka"):
            delivery.settle(asynchronous=False)
        assert replaced
        assert _abort(delivery) is None
        delivery.deliver(second, second_offsets, consumer.group_metadata())
    finally:
        release.set()
        delivery.close()
        consumer.close()
    assert sorted(_committed_values(settings)) == [b"first", b"second"]


def _first_delivered_then_second_handed_over(
    settings: Settings,
    delivery: Delivery,
    consumer: KafkaConsumer,
    read: TopicPartition,
    monkeypatch: pytest.MonkeyPatch,
    first_commit: Callable[[], object],
) -> tuple[list[Outgoing], Offsets, list[bool]]:
    """Deliver the batch `first` (offset 10), then hand the batch `second` (offset 20) over,
    whose `commit_transaction` runs `first_commit` instead (which may raise, or never
    return); later commits are kafka-python's own. Returns `second`'s records and offsets, to
    deliver again, and a list that holds True once `first_commit` ran."""
    first: list[Outgoing] = [(settings.topic_scores, b"k", b"first")]
    delivery.deliver(first, {read: OffsetAndMetadata(10, "", -1)}, consumer.group_metadata())
    commit = KafkaProducer.commit_transaction
    replaced: list[bool] = []

    def first_then_kafkas_own(producer: KafkaProducer) -> None:
        if replaced:
            return commit(producer)
        replaced.append(True)
        first_commit()

    monkeypatch.setattr(KafkaProducer, "commit_transaction", first_then_kafkas_own)
    second: list[Outgoing] = [(settings.topic_scores, b"k", b"second")]
    second_offsets = {read: OffsetAndMetadata(20, "", -1)}
    delivery.hand_over(second, second_offsets, consumer.group_metadata())
    return second, second_offsets, replaced


def _abort(delivery: Delivery) -> DeliveryError | None:
    """`abort`, which makes and initialises the next producer: its error while Kafka cannot."""
    try:
        delivery.abort()
    except DeliveryError as exc:
        return exc
    return None
