"""Replay a transactions file onto Kafka in event-time order, with delayed labels.

Transactions with `start <= tx_datetime < end` go to the transactions topic in
`(tx_datetime, transaction_id)` order, keyed by customer (see `serving.events`). Each
transaction's label goes to the labels topic once it is known in *event* time, at
`label_time = tx_datetime + delay` (the label delay of the feature repository's declarations):
a label is planned before every transaction with `tx_datetime >= label_time` (labels first on
ties) and after every transaction with `tx_datetime < label_time`.

Which labels are sent:
- the labels of the replayed transactions, including those that would only become known
  after the last replayed transaction: they are sent at the end, in `label_time` order, so that
  a monitor consuming the labels topic sees every label of the replayed period;
- the labels of transactions *before* `start` whose `label_time >= start`: they become due
  during the replay. Labels already known at `start` are not sent (the offline store has them).

With `trailing_labels=False` the labels that would only become known after the last replayed
transaction are left out, so the labels topic carries what a live stream over the same period
would: about one label per transaction (the benchmark's steady state).

The order above is the *planned* order. Every record carries a header `replay-seq` with its
position in it, one sequence shared by both topics, so the order can be checked from what a
consumer reads back. Within one partition Kafka keeps the send order (the producer is
idempotent); across the two topics it does not: a batch of labels can reach the broker after a
batch of transactions sent later.

Readable order: the worker stores every label readable when it fetched a batch of transactions
before scoring it (`serving.labels`), so a label due by a transaction must be readable before
that transaction is. The replay sends the transactions in blocks of `READABLE_BLOCK`, each once
the broker has acknowledged every label sent before it; the labels themselves are sent as soon
as they are planned. A label can thus be sent up to one block of transactions before its place
in the planned order, never after it. That is harmless: a label counts only in the windows
of transactions at or after its `label_time` (`skewless.aggregation`), and the worker tells a
label published before its `label_time` by its Kafka timestamp (wall clock), not by its place
in the stream.

`rate` paces transactions (labels are not counted) against a monotonic clock: the n-th
transaction is not sent before `start + n / rate`; when ahead, the replay sleeps in short
slices. Without a rate it publishes as fast as the producer accepts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaError

from serving.events import (
    Label,
    Transaction,
    encode_label,
    encode_transaction,
    epoch_micros,
    label_key,
    transaction_key,
)
from skewless.aggregation import WindowAggregation, label_delay_days
from skewless.data import DataError, read_transactions
from skewless.feature_store import load_declarations
from skewless.services import kafka
from skewless.services.process import port_open
from skewless.settings import Settings

logger = logging.getLogger(__name__)

SEQUENCE_HEADER = "replay-seq"
"""Header holding a record's position in the replay's planned order (decimal ASCII)."""

PROGRESS_EVERY = 100_000
READABLE_BLOCK = 1_000
"""Transactions sent after one wait for the labels due by them (module doc, "Readable order")."""
CHUNK = 20_000
"""Events converted from numpy to Python objects at a time (bounds memory on big files)."""

_COLUMNS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SLEEP_S = 0.002
_MAX_SLEEP_S = 0.05
_FLUSH_TIMEOUT_S = 120.0

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Producer(Protocol):
    """What a replay asks of its producer: kafka-python's `KafkaProducer` calls."""

    def partitions_for(self, topic: str) -> Any: ...

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any: ...

    def flush(self, timeout: float | None = None) -> Any: ...

    def close(self, timeout: float | None = None) -> Any: ...


class ReplayError(RuntimeError):
    """The replay cannot start or did not deliver every record; the message says why."""


@dataclass(frozen=True)
class ReplayStats:
    """What one replay published and how fast."""

    transactions: int
    labels: int
    seconds: float
    """Publishing time: first send to the end of the final flush."""
    prepare_seconds: float = 0.0
    """Reading the file and ordering the events."""

    @property
    def events(self) -> int:
        """Transactions plus labels."""
        return self.transactions + self.labels

    @property
    def events_per_s(self) -> float:
        """Published events per second of publishing time."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ReplayPlan:
    """Events in planned order: row `rows[i]` of the frame, a label if `is_label[i]`."""

    rows: IntArray
    is_label: BoolArray

    @property
    def transactions(self) -> int:
        """Number of transaction events."""
        return int(len(self.is_label) - self.is_label.sum())

    @property
    def labels(self) -> int:
        """Number of label events."""
        return int(self.is_label.sum())


def label_delay(declarations: Iterable[WindowAggregation]) -> timedelta:
    """The label delay the declarations state (`skewless.aggregation.label_delay_days`)."""
    try:
        return timedelta(days=label_delay_days(declarations))
    except ValueError as exc:
        raise ReplayError(str(exc)) from exc


def _micros(moment: datetime | None, default: int) -> int:
    return default if moment is None else epoch_micros(moment)


def event_micros(frame: pd.DataFrame) -> IntArray:
    """`tx_datetime` as microseconds since the epoch (UTC)."""
    stamps = frame["tx_datetime"].dt.tz_convert("UTC").dt.tz_localize(None)
    return stamps.to_numpy(dtype="datetime64[us]").view(np.int64)


def plan_replay(
    frame: pd.DataFrame,
    start: datetime | None,
    end: datetime | None,
    delay: timedelta,
    with_labels: bool = True,
    trailing_labels: bool = True,
) -> ReplayPlan:
    """Order the transactions in `[start, end)` and their labels (see the module doc).

    Events are sorted by (event time, labels before transactions, transaction_id), where the
    event time of a transaction is its `tx_datetime` and that of a label its `label_time`.
    """
    times = event_micros(frame)
    ids = frame["transaction_id"].to_numpy(dtype=np.int64)
    lower = _micros(start, np.iinfo(np.int64).min)
    upper = _micros(end, np.iinfo(np.int64).max)
    delay_us = delay // timedelta(microseconds=1)
    tx_rows = np.flatnonzero((times >= lower) & (times < upper))
    if with_labels:
        # label_time >= start  <=>  tx_datetime >= start - delay (Python ints: no overflow)
        label_lower = max(lower - delay_us, int(np.iinfo(np.int64).min))
        label_upper = upper
        if not trailing_labels:  # only the labels known by the last replayed transaction
            last = int(times[tx_rows].max()) if len(tx_rows) else label_lower
            label_upper = min(upper, last - delay_us + 1)
        label_rows = np.flatnonzero((times >= label_lower) & (times < label_upper))
    else:
        label_rows = np.empty(0, dtype=np.int64)
    rows = np.concatenate([label_rows, tx_rows])
    is_label = np.concatenate(
        [np.ones(len(label_rows), dtype=np.bool_), np.zeros(len(tx_rows), dtype=np.bool_)]
    )
    when = times[rows] + np.where(is_label, delay_us, 0)
    order = np.lexsort((ids[rows], ~is_label, when))
    return ReplayPlan(rows=rows[order].astype(np.int64), is_label=is_label[order])


class _Pacer:
    """Holds the n-th transaction back until `n / rate` seconds after the first."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ReplayError(f"rate must be positive, got {rate}")
        self.interval = 1.0 / rate if rate else 0.0
        self.started = time.monotonic()

    def restart(self) -> None:
        """Count from now."""
        self.started = time.monotonic()

    def wait(self, sent: int) -> None:
        """Sleep (in short slices) while `sent` transactions are ahead of the rate."""
        if not self.interval:
            return
        due = self.started + sent * self.interval
        ahead = due - time.monotonic()
        if ahead < _MIN_SLEEP_S:
            return
        while ahead > 0:
            time.sleep(min(ahead, _MAX_SLEEP_S))
            ahead = due - time.monotonic()


class _Failures:
    """Counts records the broker did not accept (producer errbacks)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: BaseException | None = None

    def record(self, error: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = error
            logger.error("replay: a record was not delivered: %s", error)


def _check_topics(settings: Settings) -> None:
    """Fail early (and clearly) if Kafka does not answer or a topic is missing."""
    if not port_open(settings.kafka_host, settings.kafka_port):
        raise ReplayError(
            f"nothing listens on {settings.kafka_bootstrap} (run `skewless services up`)"
        )
    try:
        client = kafka.admin(settings)
        try:
            existing = set(client.list_topics())
        finally:
            client.close()
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    missing = [t for t in (settings.topic_transactions, settings.topic_labels) if t not in existing]
    if missing:
        raise ReplayError(
            f"topics missing on {settings.kafka_bootstrap}: {', '.join(missing)} "
            "(run `skewless services up`)"
        )


def _producer(settings: Settings, linger_ms: int) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="skewless-replay",
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        batch_size=256 * 1024,
        compression_type=None,
    )


def load_events(path: Path) -> pd.DataFrame:
    """Read the transactions file and check it has what a replay needs."""
    frame = read_transactions(path)
    missing = [column for column in _COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}")
    if frame["tx_datetime"].isna().any():
        raise DataError(f"{path}: {int(frame['tx_datetime'].isna().sum())} rows without a time")
    return frame


def replay(
    settings: Settings,
    data_path: Path,
    start: datetime | None,
    end: datetime | None,
    rate: float | None,
    *,
    sequence_header: bool = True,
    trailing_labels: bool = True,
    linger_ms: int = 5,
    make_producer: Callable[[Settings, int], Producer] | None = None,
) -> ReplayStats:
    """Publish the transactions of `data_path` in `[start, end)` and their labels (module doc).

    Naive `start`/`end` are UTC. Returns the counts once every record is acknowledged
    (`acks=all`); raises `ReplayError` if Kafka or a topic is missing or a record failed.
    `sequence_header=False` leaves out the `replay-seq` header, which costs kafka-python about
    a quarter of its send throughput, for load tests that do not check the order. `linger_ms`
    is the producer's batching delay, which is part of every event's end-to-end latency.
    `make_producer(settings, linger_ms)` makes the producer instead of kafka-python's (the benchmark
    uses a faster client through the same calls: `partitions_for`, `send`, `flush`, `close`).
    """
    prepare_started = time.perf_counter()
    pacer = _Pacer(rate)  # checks the rate before any work
    if start is not None and end is not None and _micros(start, 0) >= _micros(end, 0):
        raise ReplayError(f"empty range: start {start} is not before end {end}")
    _check_topics(settings)
    frame = load_events(data_path)
    with_labels = "tx_fraud" in frame.columns
    if not with_labels:
        logger.warning("replay: %s has no tx_fraud column; no labels will be sent", data_path)
    delay = label_delay(load_declarations(settings))
    plan = plan_replay(frame, start, end, delay, with_labels, trailing_labels)
    prepare_seconds = time.perf_counter() - prepare_started
    logger.info(
        "replay: %d transactions and %d labels (delay %s) from %s to %s and %s",
        plan.transactions, plan.labels, delay, data_path.name,
        settings.topic_transactions, settings.topic_labels,
    )  # fmt: skip
    producer = (make_producer or _producer)(settings, linger_ms)
    try:
        for topic in (settings.topic_transactions, settings.topic_labels):
            producer.partitions_for(topic)  # metadata and connection before the first event
        started = time.perf_counter()
        pacer.restart()
        records = encode_plan(frame, plan, delay)
        try:
            failures = _publish(producer, settings, records, len(plan.rows), pacer, sequence_header)
            producer.flush(timeout=_FLUSH_TIMEOUT_S)
        except KafkaError as exc:
            raise ReplayError(f"replay did not complete: {exc}") from exc
        seconds = time.perf_counter() - started
    finally:
        producer.close(timeout=10)
    if failures.count:
        raise ReplayError(f"{failures.count} records were not delivered: {failures.first}")
    stats = ReplayStats(plan.transactions, plan.labels, seconds, prepare_seconds)
    logger.info(
        "replay: published %d transactions and %d labels in %.1f s (%.0f events/s)",
        stats.transactions, stats.labels, stats.seconds, stats.events_per_s,
    )  # fmt: skip
    return stats


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """One record of a replay, ready to send: which topic, key and value, at what event time."""

    is_label: bool
    event_time: datetime
    key: bytes
    value: bytes


def encode_plan(
    frame: pd.DataFrame, plan: ReplayPlan, delay: timedelta
) -> Iterator[OutgoingRecord]:
    """The planned events as encoded records, in planned order (converted chunk by chunk)."""
    times = event_micros(frame)
    transaction_ids = frame["transaction_id"].to_numpy(dtype=np.int64)
    customer_ids = frame["customer_id"].to_numpy(dtype=np.int64)
    terminal_ids = frame["terminal_id"].to_numpy(dtype=np.int64)
    amounts = frame["tx_amount"].to_numpy(dtype=np.float64)
    fraud = frame["tx_fraud"].to_numpy(dtype=np.int64) if plan.labels else None
    for chunk_start in range(0, len(plan.rows), CHUNK):
        rows = plan.rows[chunk_start : chunk_start + CHUNK]
        chunk_is_label = plan.is_label[chunk_start : chunk_start + CHUNK].tolist()
        chunk_ids = transaction_ids[rows].tolist()
        chunk_micros = times[rows].tolist()
        chunk_customers = customer_ids[rows].tolist()
        chunk_terminals = terminal_ids[rows].tolist()
        chunk_amounts = amounts[rows].tolist()
        chunk_frauds = fraud[rows].tolist() if fraud is not None else []
        for i, is_label in enumerate(chunk_is_label):
            tx_datetime = _EPOCH + timedelta(microseconds=chunk_micros[i])
            if is_label:
                label = Label(
                    chunk_ids[i],
                    chunk_customers[i],
                    chunk_terminals[i],
                    tx_datetime,
                    chunk_frauds[i],
                    tx_datetime + delay,
                )
                yield OutgoingRecord(True, label.label_time, label_key(label), encode_label(label))
            else:
                tx = Transaction(
                    chunk_ids[i],
                    tx_datetime,
                    chunk_customers[i],
                    chunk_terminals[i],
                    chunk_amounts[i],
                )
                yield OutgoingRecord(
                    False, tx_datetime, transaction_key(tx), encode_transaction(tx)
                )


def _publish(
    producer: Producer,
    settings: Settings,
    records: Iterator[OutgoingRecord],
    total: int,
    pacer: _Pacer,
    sequence_header: bool,
) -> _Failures:
    """Send the records (numbered in a header in planned order), the labels due by each block
    of transactions acknowledged before the block is sent (module doc, "Readable order");
    returns the delivery failures."""
    failures = _Failures()
    sent_transactions = 0
    block: list[tuple[int, OutgoingRecord]] = []
    clock = time.perf_counter()

    def send(seq: int, record: OutgoingRecord, topic: str) -> None:
        headers = [(SEQUENCE_HEADER, b"%d" % seq)] if sequence_header else None
        future = producer.send(topic, value=record.value, key=record.key, headers=headers)
        future.add_errback(failures.record)

    def send_block() -> None:
        nonlocal sent_transactions
        producer.flush(timeout=_FLUSH_TIMEOUT_S)  # every label sent so far is readable
        for seq, record in block:
            pacer.wait(sent_transactions)
            send(seq, record, settings.topic_transactions)
            sent_transactions += 1
        block.clear()

    for seq, record in enumerate(records):
        if record.is_label:
            send(seq, record, settings.topic_labels)
        else:
            block.append((seq, record))
            if len(block) == READABLE_BLOCK:
                send_block()
        if (seq + 1) % PROGRESS_EVERY == 0:
            elapsed = time.perf_counter() - clock
            logger.info(
                "replay: %d/%d events planned (%.0f events/s), event time %s",
                seq + 1, total, (seq + 1) / elapsed, record.event_time,
            )  # fmt: skip
    if block:
        send_block()
    return failures
