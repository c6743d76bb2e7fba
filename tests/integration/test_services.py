"""Smoke tests of the real local servers started by the fixtures."""

from __future__ import annotations

import os
import signal
import threading
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from skewless import services
from skewless.services import kafka, mlflow_server, redis_server
from skewless.services.process import ManagedProcess
from skewless.settings import Settings, load_settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _consumer(settings: Settings, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=15000,
    )


def test_platform_topics_exist_with_configured_partitions(kafka_service: Settings) -> None:
    consumer = KafkaConsumer(bootstrap_servers=kafka_service.kafka_bootstrap)
    try:
        for topic in kafka_service.topics:
            assert consumer.partitions_for_topic(topic) == set(
                range(kafka_service.kafka_partitions)
            ), topic
    finally:
        consumer.close()


def test_kafka_round_trip_and_committed_offset_resume(kafka_service: Settings) -> None:
    topic = kafka_service.topic_transactions
    run = uuid.uuid4().hex
    producer = KafkaProducer(bootstrap_servers=kafka_service.kafka_bootstrap, acks="all")
    partition = TopicPartition(topic, 0)
    for i in range(10):
        producer.send(topic, value=f"{run}-{i}".encode(), partition=0)
    producer.flush(timeout=15)
    producer.close()

    group = f"smoke-{run}"
    first = _consumer(kafka_service, group)
    first.assign([partition])
    seen: list[bytes] = []
    for record in first:
        if record.value.startswith(run.encode()):
            seen.append(record.value)
        if len(seen) == 4:
            # Commit exactly "next is the 5th record" for this group.
            first.commit({partition: OffsetAndMetadata(record.offset + 1, "", -1)})
            break
    first.close()
    assert seen == [f"{run}-{i}".encode() for i in range(4)]

    second = _consumer(kafka_service, group)
    second.assign([partition])
    rest = [r.value for r in second if r.value.startswith(run.encode())]
    second.close()
    assert rest == [f"{run}-{i}".encode() for i in range(4, 10)]


def test_redis_round_trip(redis_service: Settings) -> None:
    client = redis_server.client(redis_service)
    key = f"smoke:{uuid.uuid4().hex}"
    client.hset(key, mapping={"a": b"\x00\x01", "b": "2"})
    assert client.hgetall(key) == {b"a": b"\x00\x01", b"b": b"2"}
    client.delete(key)
    assert not client.exists(key)


def test_start_is_idempotent(kafka_service: Settings, redis_service: Settings) -> None:
    before = {s.name: s.pid for s in services.status(kafka_service)}
    kafka.start(kafka_service)
    redis_server.start(redis_service)
    after = {s.name: s.pid for s in services.status(kafka_service)}
    assert before["kafka"] is not None
    assert after["kafka"] == before["kafka"]
    assert after["redis"] == before["redis"]


def test_mlflow_server_answers(mlflow_service: Settings) -> None:
    assert mlflow_server.is_ready(mlflow_service)
    status = {s.name: s for s in services.status(mlflow_service)}
    assert status["mlflow"].healthy
    assert status["mlflow"].pid is not None


def test_a_redis_client_waits_out_a_redis_kill_9_and_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The platform's client retries a reset connection and Redis loading its AOF; what was
    acknowledged before the kill is there after it (appendfsync always)."""
    settings = load_settings(
        runtime_dir=tmp_path_factory.mktemp("redis-kill"), redis_port=free_port()
    )
    redis_server.start(settings)
    try:
        client = redis_server.client(settings)
        client.set("acknowledged", "1")
        pid = ManagedProcess(redis_server.NAME, settings.runtime_dir).pid()
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        restart = threading.Timer(1.0, redis_server.start, args=(settings,))
        restart.start()
        assert client.get("acknowledged") == b"1"  # retried until the restarted server answers
        restart.join()
    finally:
        redis_server.stop(settings)
