"""Materialization: the latest offline feature row of every entity, written to Redis.

Equivalent to `feast materialize` for our two window views, in Feast's own bytes, but one Redis
pipeline per chunk instead of Feast's per-row Python path. `until` gives the state a stream
replay starting at that instant needs: only rows strictly before it count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from skewless.aggregation import WindowAggregation, label_delay_days
from skewless.feature_store import (
    load_declarations,
    load_history,
    load_state_tiles,
    offline_table_path,
)
from skewless.history import HistoryState, prefix_beside
from skewless.offline_store import transaction_vectors
from skewless.online_store import OnlineView
from skewless.services import redis_server
from skewless.settings import Settings
from skewless.stream_state import StreamState

logger = logging.getLogger(__name__)

CHUNK_ROWS = 2_000
PROJECT = "skewless"


def latest_rows(
    spark: SparkSession, settings: Settings, declaration: WindowAggregation, until: datetime | None
) -> DataFrame:
    """Per entity, its last row in (event time, order key) before `until` (all rows if None)."""
    table = spark.read.parquet(str(offline_table_path(settings, declaration.name)))
    if until is not None:
        table = table.where(F.col(declaration.event_time) < F.lit(until))
    newest_first = Window.partitionBy(declaration.entity_key).orderBy(
        F.col(declaration.event_time).desc(), F.col(declaration.order_key).desc()
    )
    return (
        table.withColumn("_rank", F.row_number().over(newest_first))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )


def materialize(
    spark: SparkSession,
    settings: Settings,
    until: datetime | None = None,
    project: str = PROJECT,
    on_rows: Callable[[str, int, int], None] | None = None,
) -> dict[str, int]:
    """Write the latest row of every entity of each window view; returns rows per view.

    `on_rows(view, written, total)` reports progress after each chunk.
    """
    client = redis_server.client(settings)
    written: dict[str, int] = {}
    for declaration in load_declarations(settings):
        view = OnlineView.of(project, declaration)
        columns = [declaration.entity_key, declaration.event_time, *view.features]
        rows = latest_rows(spark, settings, declaration, until).select(*columns).toPandas()
        total = len(rows)
        done = 0
        for start in range(0, total, CHUNK_ROWS):
            chunk = rows.iloc[start : start + CHUNK_ROWS]
            # Spark hands back naive timestamps in its session time zone, UTC.
            stamps = pd.to_datetime(chunk[declaration.event_time], utc=True)
            times = [stamp.to_pydatetime() for stamp in stamps]
            done += view.write(
                client,
                chunk[declaration.entity_key].tolist(),
                chunk[list(view.features)].to_numpy(dtype="float64"),
                times,
            )
            if on_rows:
                on_rows(declaration.name, done, total)
        written[declaration.name] = done
        logger.info("materialized %d rows of %s", done, declaration.name)
    return written


def load_stream_state(
    settings: Settings, raw: pd.DataFrame, until: datetime, remove_other_layouts: bool = False
) -> dict[str, int]:
    """The streaming state a stream starting at `until` needs, from the raw transactions: the
    window state (`StreamState.initialize`) and the declared transaction history (from the
    offline tables' vectors, `HistoryState.initialize`), under `settings.stream_state_prefix`.
    With `remove_other_layouts`, the keys of both in other layouts go too. Returns the events
    and history transactions loaded, and the keys of other layouts removed."""
    declarations = load_declarations(settings)
    state = StreamState(
        redis_server.client(settings),
        declarations,
        settings.stream_state_prefix,
        load_state_tiles(settings),
        timedelta(seconds=settings.state_allowed_lateness_s),
    )
    delay = label_delay_days(declarations)
    loaded = {"stream_state_events": state.initialize(raw, until, label_delay_days=delay)}
    if remove_other_layouts:
        loaded["other_layout_keys_removed"] = state.remove_other_layouts()
    history = load_history(settings)
    if history is not None:
        vectors = transaction_vectors(settings, raw, declarations)
        prefix = prefix_beside(settings.stream_state_prefix)
        histories = HistoryState(state.client, history, prefix)
        loaded["history_transactions"] = histories.initialize(vectors, until)
        if remove_other_layouts:
            loaded["other_layout_keys_removed"] += histories.remove_other_layouts()
    return loaded
