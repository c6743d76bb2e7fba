"""The offline store's read path: Feast's point-in-time join of a feature service on Spark.

Training builds its training set with it; monitoring recomputes served features with it.

The entity frame is a Spark DataFrame of the transactions in a time range (one row per
transaction, its own time as `event_timestamp`, its amount and time as request data for the
on-demand view, its label). Feast joins, for every row, the latest feature row of each view at
or before that time, on the Spark offline store.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

logger = logging.getLogger(__name__)

LABEL = "tx_fraud"
EVENT_TIMESTAMP = "event_timestamp"
KEYS = ("transaction_id", "customer_id", "terminal_id", "tx_datetime")


def feature_names(service: FeatureService) -> list[str]:
    """The service's features in its own order: the model's input columns."""
    return [
        feature.name
        for projection in service.feature_view_projections
        for feature in projection.features
    ]


def entity_frame(spark: SparkSession, data_path: Path, start: datetime, end: datetime) -> DataFrame:
    """Transactions with `start <= tx_datetime < end`, shaped as Feast's entity frame."""
    raw = spark.read.parquet(str(data_path))
    in_range = (F.col("tx_datetime") >= F.lit(start)) & (F.col("tx_datetime") < F.lit(end))
    return raw.where(in_range).select(
        "transaction_id",
        "customer_id",
        "terminal_id",
        "tx_amount",
        "tx_datetime",
        F.col("tx_datetime").alias(EVENT_TIMESTAMP),
        LABEL,
    )


def historical_features(
    store: FeatureStore, service: FeatureService, entities: DataFrame
) -> pd.DataFrame:
    """Point-in-time correct features of `service` for every entity row, with keys and label.

    Rows come back ordered by (tx_datetime, transaction_id), timestamps in UTC.
    """
    # Feast's Spark store takes a Spark DataFrame, though the signature names pandas only.
    job = store.get_historical_features(entity_df=entities, features=service)  # type: ignore[arg-type]
    frame = job.to_df()
    for column in ("tx_datetime", EVENT_TIMESTAMP):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    label = [LABEL] if LABEL in frame.columns else []
    columns = [*KEYS, "tx_amount", *label, *feature_names(service)]
    frame = frame[columns].sort_values(["tx_datetime", "transaction_id"], kind="stable")
    logger.info("point-in-time join: %d rows x %d features", *frame[columns[len(KEYS) :]].shape)
    return frame.reset_index(drop=True)
