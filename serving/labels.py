"""Read the labels topic up to where it ended when a batch of transactions was fetched.

The worker scores a transaction with the label-based features (terminal risk), so before it
scores a batch it must have stored every label that was readable when it fetched that batch.
`LabelReader.catch_up` gives that guarantee with a `KafkaConsumer` (manually assigned to every
partition of the labels topic, `isolation_level='read_committed'`):

1. `end_offsets` asks the broker for each partition's end *now*: one ListOffsets request,
   sent after the transactions were fetched. Under `read_committed` the end is the last stable
   offset, which equals the high watermark while no label producer is transactional; a label
   of a transaction still open is not readable yet, exactly as it is not for any other
   `read_committed` consumer.
2. `poll` is called until every partition's `position` (the offset of the next record the
   consumer will return) has reached that end. Positions also move over what the consumer does
   not return (control records of transactions, aborted batches, compacted gaps), so the loop
   always ends once the broker answers.

So "caught up" means: for each partition, every label whose offset is below the end taken
after the transactions were fetched is in the state. Labels published later may be read too
(a fetch can bring more), never fewer. While a broker does not answer, `catch_up` waits (a
fault is waited out), logging every `SLOW_CATCH_UP_S`.

Committed offsets: the reader belongs to the consumer group `<consumer group>-labels` and starts
from its committed offsets (from the beginning when there are none). The worker commits the
positions a batch's labels were read to (`maybe_commit`, at most every `COMMIT_EVERY_S`) only
once that batch is committed: its labels are in the state and their dead letters
acknowledged. After a batch that failed it reads again from the committed positions
(`rewind`). Reading labels again is harmless: the state keeps one label per transaction id
(`serving.events`, "Identity").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

logger = logging.getLogger(__name__)

COMMIT_EVERY_S = 1.0
"""The labels' consumed offsets are committed at most this often."""

POLL_TIMEOUT_MS = 100
"""Longest wait of one `poll` while a partition is behind its end."""

SLOW_CATCH_UP_S = 10.0
"""A catch-up that has been waiting this long is logged (and again after each such period)."""

MAX_RECORDS_PER_POLL = 20_000


@dataclass
class Labels:
    """The label records one `catch_up` read: values, and where each came from."""

    values: list[bytes | None] = field(default_factory=list)
    origins: list[tuple[TopicPartition, int]] = field(default_factory=list)
    published_ms: list[int] = field(default_factory=list)
    """Each record's Kafka timestamp: when it was published (milliseconds since the epoch)."""


class LabelReader:
    """The labels topic through a manually assigned consumer (see the module doc)."""

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id="skewless-labels",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=MAX_RECORDS_PER_POLL,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            fetch_max_wait_ms=POLL_TIMEOUT_MS,
        )
        partitions = self.consumer.partitions_for_topic(topic) or set()
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.partitions)
        self._committed_at = time.monotonic()
        self._safe: dict[TopicPartition, int] = {}
        """Positions known committed: where `rewind` goes back to."""

    def catch_up(self) -> Labels:
        """Every label up to each partition's end as of this call, from the last position."""
        read = Labels()
        if not self.partitions:
            return read
        consumer = self.consumer
        if not self._safe:  # where this reader started: the group's committed positions
            self._safe = {tp: consumer.position(tp) for tp in self.partitions}
        ends = consumer.end_offsets(self.partitions)
        started = warned = time.monotonic()
        while True:
            behind = [tp for tp in self.partitions if consumer.position(tp) < ends[tp]]
            if not behind:
                break
            for tp, records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).items():
                read.values.extend(record.value for record in records)
                read.origins.extend((tp, record.offset) for record in records)
                read.published_ms.extend(record.timestamp for record in records)
            now = time.monotonic()
            if now - warned >= SLOW_CATCH_UP_S:
                warned = now
                logger.warning(
                    "labels: still behind the end on %s after %.0f s", behind, now - started
                )
        return read

    def positions(self) -> dict[TopicPartition, int]:
        """Where each label partition will be read next (what a later commit would store)."""
        return {tp: self.consumer.position(tp) for tp in self.partitions}

    def maybe_commit(self, positions: dict[TopicPartition, int]) -> None:
        """Commit `positions` if the last commit is older than `COMMIT_EVERY_S`.

        The worker calls it only once the labels read up to `positions` are in the state
        (whose writes Redis acknowledges after its fsync) and their dead letters acknowledged
        by Kafka, so a committed label is never lost.
        """
        if time.monotonic() - self._committed_at >= COMMIT_EVERY_S:
            self.commit(positions)

    def rewind(self) -> None:
        """Read again from the committed positions (after a batch that was not committed)."""
        for tp, offset in self._safe.items():
            self.consumer.seek(tp, offset)

    def commit(self, positions: dict[TopicPartition, int]) -> None:
        """Commit `positions` of the label partitions."""
        if not positions:
            return
        try:
            self.consumer.commit(
                {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in positions.items()}
            )
        except KafkaError as exc:  # the next commit carries these positions too
            logger.warning("labels: offsets not committed this time: %r", exc)
        else:
            self._safe = positions
        self._committed_at = time.monotonic()

    def close(self) -> None:
        self.consumer.close(autocommit=False)
