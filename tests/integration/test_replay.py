"""Replay against the session's real Kafka: completeness, keys, event-time order, labels, pacing.

Each test publishes to its own fresh topics. The ordering across the two topics is checked with
the `replay-seq` header: one send sequence numbering the records of both topics.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from typer.testing import CliRunner

from serving import replay as replay_module
from serving.events import Label, Transaction, parse_label, parse_transaction
from serving.replay import SEQUENCE_HEADER, ReplayError, plan_replay, replay
from skewless.data import read_transactions, write_transactions
from skewless.services import kafka
from skewless.settings import Settings, load_settings
from skewless.simulator import SimulationParams, simulate
from skewless_cli.cli import app

pytestmark = pytest.mark.integration

FIRST_DAY = date(2026, 4, 1)
DELAY = timedelta(days=7)
START = datetime(2026, 4, 11, 12, tzinfo=UTC)
END = datetime(2026, 4, 18, tzinfo=UTC)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    params = SimulationParams(n_customers=120, n_terminals=240, n_days=24, start_date=FIRST_DAY)
    frame = simulate(params).transactions
    path = write_transactions(frame, tmp_path_factory.mktemp("replay") / "transactions.parquet")
    return path, frame


def _fresh_topics(kafka_service: Settings, partitions: int = 3) -> Settings:
    run = uuid.uuid4().hex[:12]
    settings = load_settings(
        runtime_dir=kafka_service.runtime_dir,
        data_dir=kafka_service.data_dir,
        kafka_port=kafka_service.kafka_port,
        kafka_partitions=partitions,
        topic_transactions=f"tx-{run}",
        topic_labels=f"lb-{run}",
    )
    kafka.ensure_topics(settings)
    return settings


def _read_topic(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """Every record of `topic`, partition by partition in offset order."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        by_partition: dict[int, list[ConsumerRecord]] = {tp.partition: [] for tp in partitions}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"{topic}: not everything read in {timeout_s} s"
            for tp, records in consumer.poll(timeout_ms=500).items():
                by_partition[tp.partition].extend(records)
    finally:
        consumer.close()
    return [record for p in sorted(by_partition) for record in by_partition[p]]


def _seq(record: ConsumerRecord) -> int:
    headers = dict(record.headers)
    return int(headers[SEQUENCE_HEADER])


@dataclass
class ReadBack:
    """The replayed topics read back, parsed, with the send sequence of every record."""

    transactions: pd.DataFrame
    labels: pd.DataFrame


def _event_frame(
    records: list[ConsumerRecord], events: Sequence[Transaction | Label]
) -> pd.DataFrame:
    """One row per record: the parsed event's fields, where it was read and its sequence."""
    rows = []
    for record, event in zip(records, events, strict=True):
        row = {field.name: getattr(event, field.name) for field in fields(event)}
        row.update(
            partition=record.partition, offset=record.offset, key=record.key, seq=_seq(record)
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _read_back(settings: Settings) -> ReadBack:
    tx_records = _read_topic(settings, settings.topic_transactions)
    label_records = _read_topic(settings, settings.topic_labels)
    return ReadBack(
        transactions=_event_frame(tx_records, [parse_transaction(r.value) for r in tx_records]),
        labels=_event_frame(label_records, [parse_label(r.value) for r in label_records]),
    )


def test_replay_publishes_every_event_once_keyed_and_in_event_time_order(
    kafka_service: Settings, simulated: tuple[Path, pd.DataFrame]
) -> None:
    path, source = simulated
    settings = _fresh_topics(kafka_service)
    stats = replay(settings, path, START, END, rate=None)
    got = _read_back(settings)

    in_range = source[(source.tx_datetime >= START) & (source.tx_datetime < END)]
    labelled = source[(source.tx_datetime >= START - DELAY) & (source.tx_datetime < END)]
    assert (stats.transactions, stats.labels) == (len(in_range), len(labelled))
    assert len(got.transactions) == len(in_range)
    assert len(got.labels) == len(labelled)

    # Transactions: each once, exactly as in the file (minus the label), keyed by customer.
    txs = got.transactions
    assert txs.transaction_id.is_unique
    expected = in_range.drop(columns="tx_fraud").set_index("transaction_id").sort_index()
    actual = txs.set_index("transaction_id").sort_index()
    pd.testing.assert_frame_equal(
        actual[expected.columns], expected, check_dtype=False, check_index_type=False
    )
    assert (txs.key == txs.customer_id.map(lambda c: str(c).encode())).all()
    assert (txs.groupby("customer_id").partition.nunique() == 1).all()
    assert txs.partition.nunique() > 1
    for _, part in txs.groupby("partition"):
        order = list(zip(part.tx_datetime, part.transaction_id, strict=True))
        assert order == sorted(order)
        assert part.offset.is_monotonic_increasing

    # Labels: each once, known exactly `delay` after the transaction, keyed by terminal.
    labels = got.labels
    assert labels.transaction_id.is_unique
    assert set(labels.transaction_id) == set(labelled.transaction_id)
    truth = labelled.set_index("transaction_id")
    by_id = labels.set_index("transaction_id").loc[truth.index]
    assert (by_id.tx_fraud.to_numpy() == truth.tx_fraud.to_numpy()).all()
    assert (by_id.terminal_id.to_numpy() == truth.terminal_id.to_numpy()).all()
    assert (by_id.label_time == by_id.tx_datetime + DELAY).all()
    assert (labels.key == labels.terminal_id.map(lambda t: str(t).encode())).all()

    # One send sequence over both topics, without gaps or repeats.
    seqs = np.sort(np.concatenate([txs.seq.to_numpy(), labels.seq.to_numpy()]))
    np.testing.assert_array_equal(seqs, np.arange(stats.events))

    # Planned order: transactions by (tx_datetime, id); each label after every transaction
    # before its label_time and before every transaction at or after it.
    sent_txs = txs.sort_values("seq")
    order = list(zip(sent_txs.tx_datetime, sent_txs.transaction_id, strict=True))
    assert order == sorted(order)
    tx_seq = sent_txs.seq.to_numpy()
    tx_time = sent_txs.tx_datetime.to_numpy(dtype="datetime64[us]")
    label_time = labels.label_time.to_numpy(dtype="datetime64[us]")
    sent_before = np.searchsorted(tx_seq, labels.seq.to_numpy())
    due_before = np.searchsorted(tx_time, label_time, side="left")
    np.testing.assert_array_equal(sent_before, due_before)
    sent_labels = labels.sort_values("seq")
    label_order = list(zip(sent_labels.label_time, sent_labels.transaction_id, strict=True))
    assert label_order == sorted(label_order)

    # The cases the rules are about all occur in this data.
    last_tx = txs.tx_datetime.max()
    assert (labels.tx_datetime < START).sum() > 0  # due during the replay, from before start
    assert ((labels.label_time >= START) & (labels.label_time <= last_tx)).sum() > 0
    assert (labels.label_time > last_tx).sum() > 0  # published at the end
    assert (source.tx_datetime + DELAY < START).any()  # known before start: left out


def test_every_label_due_by_a_transaction_is_acknowledged_before_it_is_sent(
    kafka_service: Settings, simulated: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readable order: a worker that fetched a transaction finds every label due by it (the
    labels' end offsets it reads afterwards cover them), even though Kafka does not order the
    two topics. Labels go out at most one block of transactions early."""
    path, _ = simulated
    settings = _fresh_topics(kafka_service)
    block = 100
    monkeypatch.setattr(replay_module, "READABLE_BLOCK", block)
    sends: list[tuple[str, bool]] = []  # (topic, every label sent so far acknowledged)
    unacknowledged: list[Any] = []  # futures of labels

    class Recording(KafkaProducer):
        def send(self, topic: str | None = None, *args: Any, **kwargs: Any) -> Any:
            unacknowledged[:] = [f for f in unacknowledged if not f.is_done]
            sends.append((str(topic), not unacknowledged))
            future = super().send(topic, *args, **kwargs)
            if topic == settings.topic_labels:
                unacknowledged.append(future)
            return future

    monkeypatch.setattr(replay_module, "_producer", lambda s, linger_ms: Recording(
        bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True,
        linger_ms=linger_ms))  # fmt: skip
    stats = replay(settings, path, START, END, rate=None)
    plan = plan_replay(read_transactions(path), START, END, DELAY)
    assert len(sends) == stats.events == len(plan.rows)
    assert stats.transactions > 5 * block  # several blocks
    assert all(acknowledged for topic, acknowledged in sends if topic != settings.topic_labels)
    assert not all(acknowledged for _, acknowledged in sends)  # (labels in flight, unwaited)
    # Each label is sent with the labels planned in its block, ahead of the block's transactions.
    planned_before = np.cumsum(~plan.is_label)[plan.is_label]  # transactions planned before
    topics = np.array([topic for topic, _ in sends])
    sent_before = np.cumsum(topics == settings.topic_transactions)[topics == settings.topic_labels]
    np.testing.assert_array_equal(sent_before, planned_before // block * block)


def test_labels_come_first_on_ties_and_at_the_start_boundary() -> None:
    base = datetime(2026, 5, 1, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "transaction_id": [1, 2, 3, 4],
            "tx_datetime": pd.to_datetime(
                [base - DELAY - timedelta(microseconds=1), base - DELAY, base, base + DELAY],
                utc=True,
            ).astype("datetime64[us, UTC]"),
            "customer_id": [10, 11, 12, 13],
            "terminal_id": [20, 21, 22, 23],
            "tx_amount": [1.0, 2.0, 3.0, 4.0],
            "tx_fraud": [0, 1, 0, 1],
        }
    )
    plan = plan_replay(frame, base, None, DELAY)
    sent = [
        ("label" if is_label else "tx", int(row) + 1)
        for row, is_label in zip(plan.rows, plan.is_label, strict=True)
    ]
    # Label 1 was known before start: left out. Label 2 is due exactly at start, label 3
    # exactly at transaction 4's time: both before the transaction of the same instant.
    assert sent == [("label", 2), ("tx", 3), ("label", 3), ("tx", 4), ("label", 4)]
    # Without trailing labels, label 4 (known only after the last transaction) is left out;
    # label 3, known exactly at the last transaction's time, stays.
    steady = plan_replay(frame, base, None, DELAY, trailing_labels=False)
    assert [(bool(label), int(row) + 1) for row, label in zip(steady.rows, steady.is_label,
            strict=True)] == [(True, 2), (False, 3), (True, 3), (False, 4)]  # fmt: skip


def test_rate_paces_transactions(kafka_service: Settings, tmp_path: Path) -> None:
    count = 2000
    rng = np.random.default_rng(5)
    offsets = np.sort(rng.integers(0, 14 * 86_400 * 10**6, size=count))
    frame = pd.DataFrame(
        {
            "transaction_id": np.arange(count, dtype=np.int64),
            "tx_datetime": pd.Timestamp("2026-05-01", tz="UTC")
            + pd.to_timedelta(offsets, unit="us"),
            "customer_id": rng.integers(0, 50, size=count),
            "terminal_id": rng.integers(0, 80, size=count),
            "tx_amount": rng.uniform(1, 200, size=count).round(2),
            "tx_fraud": rng.integers(0, 2, size=count).astype(np.int8),
        }
    )
    path = write_transactions(frame, tmp_path / "transactions.parquet")
    settings = _fresh_topics(kafka_service, partitions=1)
    stats = replay(settings, path, None, None, rate=1000.0)
    assert (stats.transactions, stats.labels) == (count, count)
    # 2,000 transactions at 1,000/s: at least ~2 s; labels are not paced, so far below 4 s.
    assert 1.8 <= stats.seconds < 3.8, stats


def test_missing_topics_fail_clearly(
    kafka_service: Settings, simulated: tuple[Path, pd.DataFrame]
) -> None:
    settings = load_settings(
        kafka_port=kafka_service.kafka_port, topic_transactions=f"absent-{uuid.uuid4().hex}"
    )
    with pytest.raises(ReplayError, match="topics missing"):
        replay(settings, simulated[0], START, END, rate=None)


def test_unreachable_kafka_fails_fast(simulated: tuple[Path, pd.DataFrame]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ReplayError, match="nothing listens"):
        replay(load_settings(kafka_port=port), simulated[0], START, END, rate=None)
    assert time.monotonic() - started < 10


def test_cli_replays_a_day(kafka_service: Settings, simulated: tuple[Path, pd.DataFrame]) -> None:
    path, source = simulated
    settings = _fresh_topics(kafka_service)
    env = {
        "SKEWLESS_KAFKA_PORT": str(kafka_service.kafka_port),
        "SKEWLESS_TOPIC_TRANSACTIONS": settings.topic_transactions,
        "SKEWLESS_TOPIC_LABELS": settings.topic_labels,
    }
    args = ["replay", "--data", str(path), "--start", "2026-04-12", "--end", "2026-04-13T06:00:00"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    day = source[
        (source.tx_datetime >= "2026-04-12") & (source.tx_datetime < "2026-04-13T06:00:00Z")
    ]
    assert f"{len(day):,} to {settings.topic_transactions}" in result.output
    assert len(_read_topic(settings, settings.topic_transactions)) == len(day)

    bad = CliRunner().invoke(app, [*args[:3], "--start", "2026-04-13", "--end", "2026-04-12"])
    assert bad.exit_code == 1
    assert "empty range" in bad.output
