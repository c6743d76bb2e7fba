"""The online log: what the worker served, from the `feature-log` topic to partitioned parquet.

The worker logs one record per micro-batch; the log keeps one row per scored event: keys,
event time, model version, the exact feature vector used and the score, partitioned by the
event's UTC date (`served_date=YYYY-MM-DD`). The sink commits its offsets only after a file is
written, so a crash re-reads (and rewrites) at most one chunk; readers drop duplicate
transaction ids, keeping the last score.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from kafka import KafkaConsumer

from skewless.settings import Settings

logger = logging.getLogger(__name__)

LOG_TABLE = "online_log"
PARTITION = "served_date"
KEY_COLUMNS = ("transaction_id", "customer_id", "terminal_id", "tx_datetime")


SHARED_KEYS = ("model_name", "model_version", "feature_service", "scored_at")
COLUMN_KEYS = ("transaction_id", "customer_id", "terminal_id", "tx_datetime", "score")


def log_path(settings: Settings) -> Path:
    """Folder of the online log table."""
    return settings.data_dir / LOG_TABLE


def feature_log_rows(value: bytes) -> list[dict[str, object]]:
    """The logged rows of one feature-log record.

    The worker writes one record per micro-batch in columns (`serving.worker.
    feature_log_record`); a record of `{"rows": [...]}` or a single row is read as well.
    """
    body = json.loads(value)
    if not isinstance(body, dict):
        return [body]
    if isinstance(body.get("rows"), list):
        return list(body["rows"])
    if not isinstance(body.get("transaction_id"), list):
        return [body]
    shared = {key: body[key] for key in SHARED_KEYS if key in body}
    columns = {key: body[key] for key in COLUMN_KEYS}
    features: dict[str, list[object]] = body["features"]
    return [
        {
            **shared,
            **{key: values[row] for key, values in columns.items()},
            "features": {name: values[row] for name, values in features.items()},
        }
        for row in range(len(body["transaction_id"]))
    ]


def records_frame(bodies: list[dict[str, object]]) -> pd.DataFrame:
    """Feature-log JSON bodies as a flat frame: keys, model, score, one column per feature."""
    rows = []
    for body in bodies:
        features = body.get("features") or {}
        assert isinstance(features, dict)
        rows.append({key: value for key, value in body.items() if key != "features"} | features)
    frame = pd.DataFrame(rows)
    frame["tx_datetime"] = pd.to_datetime(frame["tx_datetime"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    frame[PARTITION] = frame["tx_datetime"].dt.strftime("%Y-%m-%d")
    return frame


def write_chunk(frame: pd.DataFrame, root: Path) -> int:
    """Append a chunk to the partitioned log (one new file per partition touched)."""
    for day, part in frame.groupby(PARTITION):
        folder = root / f"{PARTITION}={day}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(part.drop(columns=[PARTITION]), preserve_index=False)
        target = folder / f"part-{uuid.uuid4().hex}.parquet"
        tmp = target.with_suffix(".partial")
        pq.write_table(table, tmp, coerce_timestamps="us")
        tmp.rename(target)
    return len(frame)


def sink(settings: Settings, idle_exit_s: float = 10.0, chunk_rows: int = 50_000) -> int:
    """Copy the feature-log topic into the online log until idle; returns rows written."""
    consumer = KafkaConsumer(
        settings.topic_feature_log,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.consumer_group}-feature-log-sink",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
    )
    written = 0
    pending: list[dict[str, object]] = []
    last = time.monotonic()
    try:
        while True:
            polled = consumer.poll(timeout_ms=500)
            for records in polled.values():
                for record in records:
                    pending.extend(feature_log_rows(record.value))
            if polled:
                last = time.monotonic()
            idle = time.monotonic() - last > idle_exit_s
            if pending and (len(pending) >= chunk_rows or idle or not polled):
                written += write_chunk(records_frame(pending), log_path(settings))
                consumer.commit()
                pending = []
            if idle:
                break
    finally:
        consumer.close()
    logger.info("online log: %d rows written to %s", written, log_path(settings))
    return written


def read_log(
    settings: Settings, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """The online log for event times in [since, until), one row per transaction (last kept).

    Every column of every file is read: files written before a feature was served lack its
    column, and their rows read it as null (a dataset's schema is otherwise its first file's,
    and a feature added since would go unread, by the skew and drift checks too).
    """
    # Only finished files: a `.partial` left by a sink killed mid-write is not part of the log.
    paths = sorted(map(str, log_path(settings).rglob("*.parquet")))
    if not paths:
        return pd.DataFrame()
    files = ds.dataset(paths, format="parquet")
    schema = pa.unify_schemas(
        [fragment.physical_schema for fragment in files.get_fragments()],
        promote_options="permissive",
    )
    frame = ds.dataset(paths, schema=schema, format="parquet").to_table().to_pandas()
    frame["tx_datetime"] = pd.to_datetime(frame["tx_datetime"], utc=True)
    if since is not None:
        frame = frame[frame["tx_datetime"] >= pd.Timestamp(since)]
    if until is not None:
        frame = frame[frame["tx_datetime"] < pd.Timestamp(until)]
    frame = frame.sort_values("scored_at").drop_duplicates("transaction_id", keep="last")
    return frame.drop(columns=[PARTITION], errors="ignore").reset_index(drop=True)
