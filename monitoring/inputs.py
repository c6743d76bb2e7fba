"""What the checks read: the offline recomputation of served events, the delayed labels and
the dead letters (the training reference of a version is `skewless.model_runtime`'s)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pandas as pd
from kafka import KafkaConsumer, TopicPartition

from skewless import feature_store, registry
from skewless.aggregation import TransactionHistory
from skewless.data import read_transactions, resolve_data
from skewless.history import offline_history
from skewless.settings import Settings

logger = logging.getLogger(__name__)


def logged_test_metrics(settings: Settings, version: str) -> dict[str, float]:
    """The test-window metrics logged with `version`."""
    run = registry.version_run(registry.client(settings), settings.model_name, version)
    return {name: run.data.metrics[name] for name in registry.METRICS if name in run.data.metrics}


def offline_features(settings: Settings, served: pd.DataFrame) -> pd.DataFrame:
    """The same features recomputed offline (Feast point-in-time join on Spark) for the served
    (entity, event time) pairs, indexed by transaction_id."""
    from skewless import offline_store
    from skewless.spark import spark_session

    spark = spark_session(settings)
    entities = served[["transaction_id", "customer_id", "terminal_id", "tx_datetime"]].copy()
    entities["tx_amount"] = served["amount"].astype("float64")
    entities[offline_store.EVENT_TIMESTAMP] = entities["tx_datetime"]
    frame = spark.createDataFrame(entities)
    store = feature_store.open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    offline = offline_store.historical_features(store, service, frame).set_index("transaction_id")
    history = feature_store.load_history(settings)
    if history is not None and set(history.column_names) & set(served.columns):
        offline = offline.join(_offline_history(settings, served, history))
    return offline


def transactions_path(settings: Settings, version: str) -> Path:
    """The transactions data set `version` was trained from (its run's `data_path` tag), which
    holds the served transactions when a stream replays it; the demo data without the tag."""
    run = registry.version_run(registry.client(settings), settings.model_name, version)
    tagged = run.data.tags.get("data_path")
    return resolve_data(settings, Path(tagged) if tagged else None)


def _offline_history(
    settings: Settings, served: pd.DataFrame, history: TransactionHistory
) -> pd.DataFrame:
    """The served transactions' history recomputed offline, indexed by transaction id: the
    vectors of the offline tables and of the data set the serving model was trained from
    (`transactions_path`: a replay streams it)."""
    from skewless import offline_store

    version = str(served["model_version"].mode().iloc[0])
    raw = read_transactions(transactions_path(settings, version))
    raw = raw[raw["tx_datetime"] <= served["tx_datetime"].max()]
    vectors = offline_store.transaction_vectors(
        settings, raw, feature_store.load_declarations(settings)
    )
    return offline_history(vectors, history, wanted=served["transaction_id"])


def _read_topic(settings: Settings, topic: str) -> list[bytes]:
    """Every value on `topic` from the beginning up to its current end (no group, no commit)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        values: list[bytes] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
                values.extend(record.value for record in records)
        return values
    finally:
        consumer.close()


def labels(settings: Settings) -> pd.DataFrame:
    """Delayed labels published so far: transaction_id, tx_fraud, label_time."""
    rows = [json.loads(value) for value in _read_topic(settings, settings.topic_labels)]
    if not rows:
        return pd.DataFrame(columns=["transaction_id", "tx_fraud", "label_time"])
    frame = pd.DataFrame(rows)[["transaction_id", "tx_fraud", "label_time"]]
    return frame.drop_duplicates("transaction_id", keep="last")


def dead_letter_counts(settings: Settings) -> dict[str, int]:
    """Dead letters per reason code."""
    codes = Counter(
        json.loads(value).get("reason_code", "unknown")
        for value in _read_topic(settings, settings.topic_dead_letter)
    )
    return dict(codes)
