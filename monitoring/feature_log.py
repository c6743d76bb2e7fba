"""The online log: what the worker served, from the `feature-log` topic to partitioned parquet.

The worker logs one record per micro-batch; the log keeps one row per scored event: keys,
event time, model version, the exact feature vector used and the score, partitioned by the
event's UTC date (`served_date=YYYY-MM-DD`). The sink commits its offsets only after a file is
written, so a crash re-reads (and rewrites) at most one chunk; readers drop duplicate
transaction ids, keeping the last score.

A reader of a window of event time opens only the partitions of its days. A replay, or a
worker that restarts and scores again what it had not committed, adds rows for transactions
already logged: `compact` rewrites a partition as one file with the rows a reader keeps.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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


def _day_of(folder: Path) -> date | None:
    """The UTC date of a partition folder (`served_date=YYYY-MM-DD`), None for another name."""
    name, _, value = folder.name.partition("=")
    try:
        return date.fromisoformat(value) if name == PARTITION else None
    except ValueError:
        return None


def log_days(settings: Settings) -> list[date]:
    """The days of event time the online log has a partition for, in order."""
    root = log_path(settings)
    days = [_day_of(folder) for folder in root.iterdir()] if root.is_dir() else []
    return sorted(day for day in days if day is not None)


def _files(root: Path, since: datetime | None, until: datetime | None) -> list[str]:
    """The finished files of the partitions that may hold events in [since, until): a
    partition of another name is read whatever the window."""
    first = since.astimezone(UTC).date() if since is not None else None
    last = (until - timedelta(microseconds=1)).astimezone(UTC).date() if until else None
    paths = [str(path) for path in root.glob("*.parquet")]  # (outside any partition)
    for folder in root.iterdir() if root.is_dir() else ():
        day = _day_of(folder)
        if day is not None and (
            (first is not None and day < first) or (last is not None and day > last)
        ):
            continue
        # Only finished files: a `.partial` left by a sink killed mid-write is not part of it.
        paths += [str(path) for path in folder.rglob("*.parquet")]
    return sorted(paths)


def _read_files(paths: list[str]) -> pd.DataFrame:
    """Every column of every file (a column a file lacks reads as null there)."""
    files = ds.dataset(paths, format="parquet")
    schema = pa.unify_schemas(
        [fragment.physical_schema for fragment in files.get_fragments()],
        promote_options="permissive",
    )
    return ds.dataset(paths, schema=schema, format="parquet").to_table().to_pandas()


def _last_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per transaction id: its last score (by `scored_at`)."""
    return frame.sort_values("scored_at", kind="stable").drop_duplicates(
        "transaction_id", keep="last"
    )


READ_ATTEMPTS = 3
"""Listings of the log a read tries: a compaction beside it may remove a file it listed."""


def read_log(
    settings: Settings, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """The online log for event times in [since, until), one row per transaction (last kept).

    Only the partitions of the window's days are opened. Every column of their files is read:
    files written before a feature was served lack its column, and their rows read it as null
    (a dataset's schema is otherwise its first file's, and a feature added since would go
    unread, by the skew and drift checks too).
    """
    for attempt in range(1, READ_ATTEMPTS + 1):
        paths = _files(log_path(settings), since, until)
        if not paths:
            return pd.DataFrame()
        try:
            frame = _read_files(paths)
            break
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS:
                raise
            logger.info("a file of the online log went while it was read: listing it again")
    frame["tx_datetime"] = pd.to_datetime(frame["tx_datetime"], utc=True)
    if since is not None:
        frame = frame[frame["tx_datetime"] >= pd.Timestamp(since)]
    if until is not None:
        frame = frame[frame["tx_datetime"] < pd.Timestamp(until)]
    frame = _last_scores(frame)
    return frame.drop(columns=[PARTITION], errors="ignore").reset_index(drop=True)


STALE_PARTIAL_S = 3600.0
"""A `.partial` file untouched this long was left by a writer that died: compaction removes it
(a sink writes a chunk in seconds)."""


@dataclass(frozen=True)
class Compaction:
    """What `compact` did."""

    partitions: int
    """Partitions rewritten (those of more than one file)."""
    files: int
    """Files they had."""
    rows_before: int
    rows_after: int
    stale_partials: int = 0
    """`.partial` files removed (`STALE_PARTIAL_S`)."""


def compact(settings: Settings, before: date | None = None) -> Compaction:
    """Rewrite each partition of more than one file (of days before `before`, or all) as one
    file of the rows a reader keeps: one per transaction id, its last score.

    The new file is complete before it appears (written aside, then renamed), and the files it
    replaces are removed after: a reader meanwhile sees every row at least once, and drops the
    repeats. Files the sink adds meanwhile are left for the next compaction, and so are its
    `.partial` files but those of a writer that died (`STALE_PARTIAL_S`)."""
    partitions = files = rows_before = rows_after = stale = 0
    root = log_path(settings)
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        day = _day_of(folder)
        if day is None or (before is not None and day >= before):
            continue
        for partial in folder.glob("*.partial"):
            if time.time() - partial.stat().st_mtime > STALE_PARTIAL_S:
                partial.unlink(missing_ok=True)
                stale += 1
        paths = sorted(folder.glob("*.parquet"))
        if len(paths) < 2:
            continue
        frame = _read_files([str(path) for path in paths])
        kept = _last_scores(frame)
        target = folder / f"part-{uuid.uuid4().hex}.parquet"
        partial = target.with_suffix(".partial")
        kept = kept.drop(columns=[PARTITION], errors="ignore")
        table = pa.Table.from_pandas(kept, preserve_index=False)
        pq.write_table(table, partial, coerce_timestamps="us")
        partial.rename(target)
        for path in paths:
            path.unlink(missing_ok=True)  # (a compaction beside this one may have gone first)
        partitions, files = partitions + 1, files + len(paths)
        rows_before, rows_after = rows_before + len(frame), rows_after + len(kept)
        logger.info(
            "online log %s: %d files, %d rows -> 1 file, %d rows",
            *(folder.name, len(paths), len(frame), len(kept)),
        )
    return Compaction(partitions, files, rows_before, rows_after, stale)
