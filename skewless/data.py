"""Raw transaction files: reading (parquet or CSV), validated import, atomic writes.

Every data set the platform uses is a parquet file in the canonical schema of DESIGN.md, with
microsecond UTC timestamps (Spark 4 rejects the nanosecond timestamps pandas writes by default).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skewless.quality import CANONICAL_TYPES, ValidationReport, validate_transactions
from skewless.settings import Settings

logger = logging.getLogger(__name__)

DEMO_DATASET = "demo"
TRANSACTIONS_FILE = "transactions.parquet"
VALIDATION_FILE = "validation.json"


class DataError(ValueError):
    """A data file is unreadable or fails validation; the message says why."""


@dataclass(frozen=True)
class ImportResult:
    """Where an imported data set went and what its validation said."""

    path: Path
    report: ValidationReport


def dataset_path(settings: Settings, name: str = DEMO_DATASET) -> Path:
    """The parquet file of a named data set under the data folder."""
    return settings.data_dir / name / TRANSACTIONS_FILE


def resolve_data(settings: Settings, data: Path | None) -> Path:
    """The file a command reads: `--data PATH` if given, else the demo data set."""
    path = data if data is not None else dataset_path(settings)
    if path.is_dir():
        path = path / TRANSACTIONS_FILE
    if not path.exists():
        hint = "run `skewless simulate` (or `make demo`)" if data is None else "check --data"
        raise DataError(f"no transactions at {path}: {hint}")
    return path


def read_transactions(path: Path) -> pd.DataFrame:
    """Read parquet or CSV; `tx_datetime` is parsed to UTC (unparseable values become NaT)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype={"tx_datetime": "string"})
        elif suffix in {".parquet", ".pq"} or path.is_dir():
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: expected a .parquet or .csv file")
    except (OSError, ValueError, pa.ArrowException) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if "tx_datetime" in frame.columns:
        frame["tx_datetime"] = _parse_utc(frame["tx_datetime"])
    return frame


def _parse_utc(values: pd.Series) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        parsed = values.dt.tz_localize("UTC")
    else:
        parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    return parsed.astype("datetime64[us, UTC]")


def write_transactions(frame: pd.DataFrame, path: Path) -> Path:
    """Write `frame` as parquet with microsecond timestamps, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp_name, coerce_timestamps="us", allow_truncated_timestamps=False)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path


def import_transactions(source: Path, settings: Settings, name: str | None = None) -> ImportResult:
    """Validate `source` and, only if it passes, store it as the data set `name`.

    A rejected file leaves nothing behind; the `DataError` carries the validation report.
    """
    frame = read_transactions(source)
    report = validate_transactions(frame)
    if not report.success:
        raise DataError(f"{source} rejected: {report.describe()}")
    target = dataset_path(settings, name or source.stem)
    extra = [column for column in frame.columns if column not in CANONICAL_TYPES]
    if extra:
        logger.info("dropping columns outside the canonical schema: %s", ", ".join(extra))
    frame = frame[list(CANONICAL_TYPES)].sort_values(
        ["tx_datetime", "transaction_id"], kind="stable"
    )
    write_transactions(frame.reset_index(drop=True), target)
    _write_json(target.with_name(VALIDATION_FILE), report.results)
    logger.info("imported %d transactions from %s into %s", len(frame), source, target)
    return ImportResult(target, report)


def _write_json(path: Path, payload: object) -> None:
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
