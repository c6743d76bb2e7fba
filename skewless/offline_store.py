"""The offline store's read path: the features of a feature service for given transactions.

Training builds its training and test sets with it; monitoring recomputes served features with
it.

The entity frame is a Spark DataFrame of transactions (one row each, its own time as
`event_timestamp`, its amount and time as request data for the on-demand view, its label). A
window view's offline table holds one row per transaction: the view's entity as of that
transaction, computed by the backfill in (event time, transaction id) order. Each entity row
takes the row of its own transaction, joined on the view's entity key, the event time and the
transaction id.

Feast's point-in-time join (`get_historical_features`) is not used for the window views: it
matches a feature row on (entity key, event time) only, so two transactions of one card in the
same second came back as two rows each, every one with either transaction's features (its
latest-row step keeps both rows of the tie and its entity-row id is the key and the time). The
transaction id is what tells them apart, and the tables carry it. The on-demand view runs
Feast's own transformation (`OnDemandFeatureView.transform_arrow`), as Feast's retrieval does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from skewless.aggregation import WindowAggregation
from skewless.feature_store import offline_table_path
from skewless.settings import Settings
from skewless.transaction_features import add_transaction_features

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore, FeatureView, OnDemandFeatureView

logger = logging.getLogger(__name__)

LABEL = "tx_fraud"
EVENT_TIMESTAMP = "event_timestamp"
TRANSACTION_ID = "transaction_id"
"""The order key of every declaration: the column that tells one transaction's row apart."""
KEYS = (TRANSACTION_ID, "customer_id", "terminal_id", "tx_datetime")


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


class OfflineStoreError(RuntimeError):
    """An offline table does not give one row per transaction."""


def historical_features(
    store: FeatureStore, service: FeatureService, entities: DataFrame
) -> pd.DataFrame:
    """The features of `service` for every entity row, with keys and label: one row per row.

    A transaction without a row in a view's table (not backfilled yet) gets nulls for that
    view. Rows come back ordered by (tx_datetime, transaction_id), timestamps in UTC.
    """
    from feast.errors import FeatureViewNotFoundException

    bounds = entities.agg(
        F.count(F.lit(1)).alias("rows"),
        F.min(EVENT_TIMESTAMP).alias("since"),
        F.max(EVENT_TIMESTAMP).alias("until"),
    ).first()
    assert bounds is not None  # an aggregate without grouping has one row
    joined = entities
    window_views: dict[str, list[str]] = {}
    on_demand: list[tuple[OnDemandFeatureView, list[str]]] = []
    for projection in service.feature_view_projections:
        names = [feature.name for feature in projection.features]
        try:
            view = store.get_feature_view(projection.name)
        except FeatureViewNotFoundException:
            on_demand.append((store.get_on_demand_feature_view(projection.name), names))
            continue
        rows = _transaction_rows(entities.sparkSession, view, names, bounds.since, bounds.until)
        on = [*view.join_keys, EVENT_TIMESTAMP, TRANSACTION_ID]
        joined = joined.join(rows, on=on, how="left")
        window_views[view.name] = names
    frame = joined.toPandas()
    if len(frame) != bounds.rows:
        raise OfflineStoreError(
            f"{len(frame) - bounds.rows} rows more than the {bounds.rows} transactions asked for: "
            f"an offline table of {sorted(window_views)} holds several rows for one transaction "
            "(rerun the backfill)"
        )
    for column in ("tx_datetime", EVENT_TIMESTAMP):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    for view_name, names in window_views.items():
        missing = int(frame[names[0]].isna().sum())
        if missing:
            logger.warning(
                "%d of %d transactions have no row in %s (not backfilled): null features",
                *(missing, len(frame), view_name),
            )
    for odfv, names in on_demand:
        request = list(odfv.get_request_data_schema())
        transformed = odfv.transform_arrow(pa.Table.from_pandas(frame[request]))
        for name in names:
            frame[name] = transformed.column(name).to_numpy()
    label = [LABEL] if LABEL in frame.columns else []
    columns = [*KEYS, "tx_amount", *label, *feature_names(service)]
    frame = frame[columns].sort_values(["tx_datetime", "transaction_id"], kind="stable")
    logger.info("offline features: %d rows x %d features", *frame[columns[len(KEYS) :]].shape)
    return frame.reset_index(drop=True)


def _transaction_rows(
    spark: SparkSession, view: FeatureView, names: list[str], since: datetime, until: datetime
) -> DataFrame:
    """The rows of `view`'s offline table for transactions between `since` and `until`:
    entity key, event time (as `event_timestamp`), transaction id and the features `names`."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    source = view.batch_source
    if not isinstance(source, SparkSource):
        raise TypeError(f"{view.name}: the offline store reads Spark sources, not {type(source)}")
    table = spark.sql(f"SELECT * FROM {source.get_table_query_string()}")
    if TRANSACTION_ID not in table.columns:
        raise OfflineStoreError(f"{view.name}: its table has no {TRANSACTION_ID} column")
    time = F.col(source.timestamp_field)
    return table.where((time >= F.lit(since)) & (time <= F.lit(until))).select(
        *view.join_keys, time.alias(EVENT_TIMESTAMP), TRANSACTION_ID, *names
    )


def transaction_vectors(
    settings: Settings, transactions: pd.DataFrame, declarations: Sequence[WindowAggregation]
) -> pd.DataFrame:
    """`transactions` (canonical columns) with their per-transaction features and each
    declaration's features from its offline table, joined on the transaction id: the vectors
    a transaction history is made of, read without Spark (as the tables hold one row per
    transaction, these are the rows `historical_features` joins). A transaction without a
    row in a table (not backfilled) has NaN features of it."""
    frame = add_transaction_features(transactions)
    for declaration in declarations:
        columns = [TRANSACTION_ID, *declaration.feature_names]
        table = pd.read_parquet(offline_table_path(settings, declaration.name), columns=columns)
        if table[TRANSACTION_ID].duplicated().any():
            raise OfflineStoreError(
                f"the offline table {declaration.name} holds several rows for one transaction "
                "(rerun the backfill)"
            )
        frame = frame.merge(table, on=TRANSACTION_ID, how="left")
    return frame
