"""Produce a whole micro-batch in one request per broker and wait for its acknowledgement.

`KafkaProducer.send` appends records one at a time to an accumulator that a background thread
drains: about 20 us of Python per record, plus a second thread competing for the interpreter.
The worker already holds its whole micro-batch, and must wait for Kafka's acknowledgement
before it commits anyway. So it buffers the batch's records here, and `flush` builds each
partition's record batch with kafka-python's own record-batch builder. It sends them with
kafka-python's network client, one `ProduceRequest` per leader (`acks=all`), and waits for
the answers. That costs about 5 us a record.

- Partitions are chosen like Kafka's default partitioner (murmur2 of the key). Records
  without a key go round robin.
- A partition's records travel in record batches of at most `max_batch_bytes`; each round
  of requests carries at most one batch per partition. The next round starts only once the
  previous one is acknowledged, so the order within a partition is kept.
- A retriable error (leader moved, not enough replicas, timeout, lost connection) refreshes
  the metadata and sends the failed partitions again, up to `retries` times with backoff.
  Any other error, or retries used up, raises `ProduceError`. The caller then stops without
  committing its consumer offsets, so no event is lost (at-least-once: a retry after a
  timeout may write a record twice; consumers deduplicate by key).
- Backpressure is built in: the worker fetches its next batch only once `flush` returned, so
  at most one micro-batch of records is ever buffered, however slow the broker.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import kafka.errors as kafka_errors
from kafka.net.compat import KafkaNetClient
from kafka.partitioner.default import murmur2
from kafka.protocol.producer import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.structs import TopicPartition

logger = logging.getLogger(__name__)

ACKS_ALL = -1
RECORD_OVERHEAD_BYTES = 32
"""A generous bound of a record's framing (varints, attributes, header count) in a batch."""
BATCH_OVERHEAD_BYTES = 61
"""The fixed header of a record batch (format v2)."""


class ProduceError(RuntimeError):
    """Records that Kafka did not acknowledge (the batch must not be committed)."""


@dataclass
class _Pending:
    """The records buffered for one partition, in order."""

    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)


class BatchProducer:
    """Buffer records with `send`, deliver them all with `flush` (see the module doc)."""

    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str,
        *,
        retries: int = 5,
        request_timeout_ms: int = 30_000,
        retry_backoff_s: float = 0.2,
        max_batch_bytes: int = 900 * 1024,
    ) -> None:
        self._client = KafkaNetClient(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
        )
        self.retries = retries
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_s = retry_backoff_s
        self.max_batch_bytes = max_batch_bytes
        self._partitions: dict[str, int] = {}
        self._pending: dict[TopicPartition, _Pending] = defaultdict(_Pending)
        self._round_robin = 0

    def connect(self, topics: list[str]) -> None:
        """Fetch the topics' metadata and connect to their leaders now, not on the first flush."""
        leaders = set()
        for topic in topics:
            for partition in range(self._partition_count(topic)):
                leaders.add(
                    self._client.cluster.leader_for_partition(TopicPartition(topic, partition))
                )
        for leader in leaders - {None, -1}:
            self._client.await_ready(leader, timeout_ms=self.request_timeout_ms)

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Buffer one record; it is delivered by the next `flush`."""
        self.send_many(topic, [key], [value])

    def send_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        """Buffer records of one topic, in order, stamped with the current time."""
        count = self._partition_count(topic)
        now_ms = int(time.time() * 1000)
        for key, value in zip(keys, values, strict=True):
            if key is None:
                partition = self._round_robin % count
                self._round_robin += 1
            else:
                partition = (murmur2(key) & 0x7FFFFFFF) % count
            pending = self._pending[TopicPartition(topic, partition)]
            pending.keys.append(key)
            pending.values.append(value)
            pending.timestamps.append(now_ms)

    def flush(self, meanwhile: Callable[[], None] | None = None) -> None:
        """Deliver every buffered record and wait until Kafka acknowledged all of them.

        `meanwhile` runs once the first requests are on their way, before waiting for the
        answers (other I/O of the caller overlaps with the broker's work).
        """
        pending, self._pending = self._pending, defaultdict(_Pending)
        rounds: dict[TopicPartition, list[bytes]] = {
            tp: self._record_batches(records) for tp, records in pending.items()
        }
        while rounds:
            this_round = {tp: batches[0] for tp, batches in rounds.items()}
            self._deliver(this_round, meanwhile)
            meanwhile = None
            rounds = {tp: batches[1:] for tp, batches in rounds.items() if len(batches) > 1}
        if meanwhile is not None:
            meanwhile()

    def close(self) -> None:
        """Deliver what is buffered, then close the connections."""
        try:
            self.flush()
        finally:
            self._client.close()

    def _record_batches(self, pending: _Pending) -> list[bytes]:
        """The partition's records as record batches of at most `max_batch_bytes` each."""
        batches: list[bytes] = []
        builder: DefaultRecordBatchBuilder | None = None
        size = offset = 0
        for key, value, stamp in zip(pending.keys, pending.values, pending.timestamps, strict=True):
            record_size = len(value) + (len(key) if key else 0) + RECORD_OVERHEAD_BYTES
            if builder is not None and size + record_size > self.max_batch_bytes:
                batches.append(bytes(builder.build()))
                builder = None
            if builder is None:
                builder = _new_builder()
                size, offset = BATCH_OVERHEAD_BYTES, 0
            builder.append(offset, timestamp=stamp, key=key, value=value, headers=[])
            size += record_size
            offset += 1
        if builder is not None:
            batches.append(bytes(builder.build()))
        return batches

    def _deliver(
        self, batches: dict[TopicPartition, bytes], meanwhile: Callable[[], None] | None
    ) -> None:
        """Send one record batch per partition; retry what failed with a retriable error."""
        attempt = 0
        while batches:
            failures = self._send_once(batches, meanwhile)
            meanwhile = None
            if not failures:
                return
            fatal = {tp: error for tp, error in failures.items() if not error.retriable}
            if fatal or attempt >= self.retries:
                described = ", ".join(
                    f"{tp.topic}[{tp.partition}]: {e!r}" for tp, e in failures.items()
                )
                raise ProduceError(f"records not acknowledged after {attempt} retries: {described}")
            attempt += 1
            kinds = ", ".join(sorted({type(error).__name__ for error in failures.values()}))
            logger.warning(
                "produce attempt %d: %d partitions failed (%s); retrying",
                attempt, len(failures), kinds,
            )  # fmt: skip
            time.sleep(self.retry_backoff_s * attempt)
            self._refresh_metadata({tp.topic for tp in failures})
            batches = {tp: batches[tp] for tp in failures}

    def _send_once(
        self, batches: dict[TopicPartition, bytes], meanwhile: Callable[[], None] | None
    ) -> dict[TopicPartition, kafka_errors.KafkaError]:
        """One request per leader, all in flight at once; the partitions that failed, and why."""
        by_leader: dict[int, dict[TopicPartition, bytes]] = defaultdict(dict)
        failures: dict[TopicPartition, kafka_errors.KafkaError] = {}
        for tp, records in batches.items():
            leader = self._client.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                failures[tp] = kafka_errors.LeaderNotAvailableError(f"no leader known for {tp}")
            else:
                by_leader[leader][tp] = records
        in_flight = []
        for leader, partitions in by_leader.items():
            try:
                self._client.await_ready(leader, timeout_ms=self.request_timeout_ms)
                future = self._client.send(
                    leader, _produce_request(partitions, self.request_timeout_ms)
                )
            except kafka_errors.KafkaError as exc:
                failures.update({tp: _retriable(exc) for tp in partitions})
                continue
            in_flight.append((future, partitions))
        if meanwhile is not None:
            meanwhile()
        for future, partitions in in_flight:
            self._client.poll(timeout_ms=self.request_timeout_ms, future=future)
            if not future.is_done:
                error: kafka_errors.KafkaError = kafka_errors.KafkaTimeoutError(
                    "no produce response"
                )
                failures.update({tp: error for tp in partitions})
            elif future.failed():
                failures.update({tp: _retriable(future.exception) for tp in partitions})
            else:
                failures.update(_partition_errors(future.value, partitions))
        return failures

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            self._refresh_metadata({topic})
            partitions = self._client.cluster.partitions_for_topic(topic)
            if not partitions:
                raise ProduceError(f"topic {topic!r} is unknown to the cluster")
            count = self._partitions[topic] = len(partitions)
        return count

    def _refresh_metadata(self, topics: set[str]) -> None:
        for topic in topics:
            self._client.cluster.add_topic(topic)
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        while time.monotonic() < deadline:
            future = self._client.cluster.request_update()
            self._client.poll(timeout_ms=self.request_timeout_ms, future=future)
            if future.succeeded() and all(
                self._client.cluster.partitions_for_topic(topic) for topic in topics
            ):
                return
            time.sleep(self.retry_backoff_s)
        raise ProduceError(f"no metadata for {sorted(topics)} within {self.request_timeout_ms} ms")


def _new_builder() -> DefaultRecordBatchBuilder:
    return DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,  # the size is bounded by the caller
    )


def _produce_request(partitions: dict[TopicPartition, bytes], timeout_ms: int) -> ProduceRequest:
    topic_data = ProduceRequest.TopicProduceData
    partition_data = topic_data.PartitionProduceData
    by_topic: dict[str, list[object]] = defaultdict(list)
    for tp, records in partitions.items():
        by_topic[tp.topic].append(partition_data(index=tp.partition, records=records))
    return ProduceRequest(
        transactional_id=None,
        acks=ACKS_ALL,
        timeout_ms=timeout_ms,
        topic_data=[topic_data(name=name, partition_data=data) for name, data in by_topic.items()],
        max_version=9,
    )


def _partition_errors(
    response: object, partitions: dict[TopicPartition, bytes]
) -> dict[TopicPartition, kafka_errors.KafkaError]:
    """The partitions the broker did not accept, with the error it gave."""
    answered: set[TopicPartition] = set()
    failures: dict[TopicPartition, kafka_errors.KafkaError] = {}
    for topic in response.responses:  # type: ignore[attr-defined]
        for answer in topic.partition_responses:
            tp = TopicPartition(topic.name, answer.index)
            answered.add(tp)
            if answer.error_code != 0:
                failures[tp] = kafka_errors.for_code(answer.error_code)(answer.error_message)
    for tp in partitions:
        if tp not in answered:
            failures[tp] = kafka_errors.KafkaTimeoutError(f"no answer for {tp}")
    return failures


def _retriable(exc: BaseException | None) -> kafka_errors.KafkaError:
    """A transport failure is worth a retry (the records may or may not have been written)."""
    if isinstance(exc, kafka_errors.KafkaError):
        return exc if exc.retriable else kafka_errors.KafkaConnectionError(repr(exc))
    return kafka_errors.KafkaConnectionError(repr(exc))
