"""Read a topic's partitions with one fetch request per broker, decoded with little Python.

The labels are not consumed through `KafkaConsumer.poll`. That path makes two objects per
record and costs about 10 us a record, as much as the rest of a transaction's scoring. The
worker also needs something `poll` does not give: certainty that it has read every label
that existed when it fetched a batch of transactions. A `PartitionFetcher` sends one
`FetchRequest` per leader with the positions it keeps, with no waiting on the broker
(`max_wait_ms=0`). It decodes the record batches (format v2, the only one Kafka 4 writes;
CRC32C checked; gzip, snappy, lz4 and zstd through kafka-python's codecs) and reports each
partition's high watermark from the same response. A partition is *caught up* once its
position reaches the high watermark the broker reported at that fetch.

Committed offsets stay with a `KafkaConsumer` of the same group (`positions_from` and
`commit`), so a restart resumes where the last commit left off. Re-reading labels is
harmless: the state's members are idempotent.

Errors: a position the log no longer holds moves to the log start (what `earliest` would do).
A moved or unknown leader, or a lost connection, refreshes the metadata, and the partition is
fetched again next time (not caught up meanwhile). Any other error, or metadata that cannot
be had within the request timeout, raises `FetchError`.
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from dataclasses import dataclass, field

import kafka.errors as kafka_errors
from crc32c import crc32c
from kafka import codec
from kafka.net.compat import KafkaNetClient
from kafka.protocol.consumer import FetchRequest
from kafka.structs import TopicPartition

logger = logging.getLogger(__name__)

_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
"""Record batch v2: base offset, length, leader epoch, magic, CRC, attributes, last offset
delta, first and max timestamps, producer id and epoch, base sequence, record count."""
_BATCH_OVERHEAD = 12
"""Bytes before a batch's length counts: base offset (8) and the length itself (4)."""
_CRC_START = 21
"""The CRC covers the batch from its attributes (offset 21) to the end."""
_COMPRESSION_MASK = 0x07
_CONTROL_FLAG = 0x20
_FIRST_VERSION_WITH_LOG_START = 5
_DECODERS = {1: "gzip_decode", 2: "snappy_decode", 3: "lz4_decode", 4: "zstd_decode"}
_RETRIABLE = (
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.UnknownTopicOrPartitionError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.FencedLeaderEpochError,
    kafka_errors.UnknownLeaderEpochError,
    kafka_errors.KafkaStorageError,
)


class FetchError(RuntimeError):
    """A fetch the worker cannot recover from (corrupt data, authorization, ...)."""


@dataclass
class Fetched:
    """What one `fetch` brought: record values and offsets in partition order, per partition."""

    values: list[bytes | None] = field(default_factory=list)
    offsets: list[tuple[TopicPartition, int]] = field(default_factory=list)
    caught_up: bool = True
    """Every partition's position reached the high watermark of this fetch."""


class PartitionFetcher:
    """Fetch the given partitions from positions this object keeps (see the module doc)."""

    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str,
        positions: dict[TopicPartition, int],
        *,
        max_bytes: int = 32 * 1024 * 1024,
        partition_max_bytes: int = 8 * 1024 * 1024,
        request_timeout_ms: int = 30_000,
    ) -> None:
        self._client = KafkaNetClient(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            receive_message_max_bytes=max_bytes + 1024 * 1024,
        )
        self.positions = dict(positions)
        self.max_bytes = max_bytes
        self.partition_max_bytes = partition_max_bytes
        self.request_timeout_ms = request_timeout_ms
        self._refresh_metadata()

    def fetch(self) -> Fetched:
        """One request per leader, without waiting for new data; positions move past it."""
        fetched = Fetched()
        by_leader: dict[int, list[TopicPartition]] = defaultdict(list)
        for tp in self.positions:
            leader = self._client.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                self._refresh_metadata()
                fetched.caught_up = False
                continue
            by_leader[leader].append(tp)
        for leader, partitions in by_leader.items():
            try:
                response = self._client.send_and_receive(
                    leader, self._request(partitions), timeout_ms=self.request_timeout_ms
                )
            except kafka_errors.KafkaError as exc:
                if not exc.retriable:
                    raise FetchError(f"fetch from broker {leader} failed: {exc!r}") from exc
                logger.warning("fetch from broker %s failed (%r); refreshing metadata", leader, exc)
                self._refresh_metadata()
                fetched.caught_up = False
                continue
            for topic in response.responses:
                for answer in topic.partitions:
                    tp = TopicPartition(topic.topic, answer.partition_index)
                    if not self._read_partition(tp, answer, response.API_VERSION, fetched):
                        fetched.caught_up = False
        return fetched

    def close(self) -> None:
        self._client.close()

    def _request(self, partitions: list[TopicPartition]) -> FetchRequest:
        fetch_topic = FetchRequest.FetchTopic
        fetch_partition = fetch_topic.FetchPartition
        by_topic: dict[str, list[object]] = defaultdict(list)
        for tp in partitions:
            by_topic[tp.topic].append(
                fetch_partition(
                    partition=tp.partition,
                    current_leader_epoch=-1,
                    fetch_offset=self.positions[tp],
                    last_fetched_epoch=-1,
                    log_start_offset=-1,
                    partition_max_bytes=self.partition_max_bytes,
                )
            )
        return FetchRequest(
            max_wait_ms=0,
            min_bytes=0,
            max_bytes=self.max_bytes,
            isolation_level=0,  # read uncommitted: the label producers are not transactional
            session_id=0,
            session_epoch=-1,  # no fetch session: every request names every partition
            topics=[fetch_topic(topic=name, partitions=parts) for name, parts in by_topic.items()],
            forgotten_topics_data=[],
            rack_id="",
            max_version=12,
        )

    def _read_partition(
        self, tp: TopicPartition, answer: object, version: int, fetched: Fetched
    ) -> bool:
        """Decode one partition's answer into `fetched`; whether it is now caught up."""
        error_code = answer.error_code  # type: ignore[attr-defined]
        if error_code:
            error = kafka_errors.for_code(error_code)
            if error is kafka_errors.OffsetOutOfRangeError:
                start = answer.log_start_offset  # type: ignore[attr-defined]
                if version < _FIRST_VERSION_WITH_LOG_START or start < 0:
                    raise FetchError(f"{tp}: position {self.positions[tp]} is out of range")
                logger.warning(
                    "%s: position %d is no longer in the log; resuming at its start, %d",
                    tp, self.positions[tp], start,
                )  # fmt: skip
                self.positions[tp] = start
                return False
            if error in _RETRIABLE:
                logger.warning("%s: %s; refreshing metadata", tp, error.__name__)
                self._refresh_metadata()
                return False
            raise FetchError(f"{tp}: {error.__name__}")
        records = answer.records or b""  # type: ignore[attr-defined]
        position = self.positions[tp]
        position = _decode_batches(bytes(records), tp, position, fetched)
        self.positions[tp] = position
        return position >= answer.high_watermark  # type: ignore[attr-defined]

    def _refresh_metadata(self) -> None:
        for topic in {tp.topic for tp in self.positions}:
            self._client.cluster.add_topic(topic)
        future = self._client.cluster.request_update()
        self._client.poll(timeout_ms=self.request_timeout_ms, future=future)
        if future.failed():
            raise FetchError(f"no metadata: {future.exception!r}")


def _decode_batches(buffer: bytes, tp: TopicPartition, position: int, fetched: Fetched) -> int:
    """Append the records at or after `position` to `fetched`; the next position."""
    pos = 0
    size = len(buffer)
    while pos + _BATCH_HEADER.size <= size:
        (base_offset, length, _, magic, crc, attributes, last_delta, _, _, _, _, _, count) = (
            _BATCH_HEADER.unpack_from(buffer, pos)
        )
        end = pos + _BATCH_OVERHEAD + length
        if end > size:
            break  # a partial batch at the end of the response: fetched again next time
        if magic != 2:
            raise FetchError(f"{tp}: record batch format v{magic} at {base_offset} (need v2)")
        if crc32c(buffer[pos + _CRC_START : end]) != crc:
            raise FetchError(f"{tp}: record batch at offset {base_offset} failed its CRC check")
        if not attributes & _CONTROL_FLAG:
            records = buffer[pos + _BATCH_HEADER.size : end]
            compression = attributes & _COMPRESSION_MASK
            if compression:
                decoder = getattr(codec, _DECODERS.get(compression, ""), None)
                if decoder is None:
                    raise FetchError(f"{tp}: no decoder for compression type {compression}")
                records = decoder(records)
            _decode_records(records, count, base_offset, position, tp, fetched)
        position = max(position, base_offset + last_delta + 1)
        pos = end
    return position


def _decode_records(
    buffer: bytes, count: int, base_offset: int, position: int, tp: TopicPartition, fetched: Fetched
) -> None:
    """The values of a batch's records (keys, timestamps and headers are skipped)."""
    values = fetched.values
    offsets = fetched.offsets
    pos = 0
    for _ in range(count):
        length, pos = _varint(buffer, pos)
        end = pos + length
        pos += 1  # attributes
        _, pos = _varint(buffer, pos)  # timestamp delta
        offset_delta, pos = _varint(buffer, pos)
        key_length, pos = _varint(buffer, pos)
        if key_length > 0:
            pos += key_length
        value_length, pos = _varint(buffer, pos)
        offset = base_offset + offset_delta
        if offset >= position:  # a fetch can start inside a batch
            values.append(buffer[pos : pos + value_length] if value_length >= 0 else None)
            offsets.append((tp, offset))
        pos = end


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at `pos`, and the position after it."""
    byte = buffer[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
