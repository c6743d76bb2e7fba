"""The online log read back across files that served different features."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from monitoring import feature_log
from monitoring.feature_log import compact, log_days, log_path, read_log, records_frame, write_chunk
from monitoring.monitor import Window, _latest_served_by, served_window
from skewless.settings import Settings, load_settings


def _body(
    transaction_id: int, day: str, features: dict[str, object], version: str = "1"
) -> dict[str, object]:
    return {
        "model_name": "fraud-detector",
        "model_version": version,
        "feature_service": "fraud_model_v1",
        "scored_at": f"{day}T12:00:00Z",
        "transaction_id": transaction_id,
        "customer_id": 1,
        "terminal_id": 2,
        "tx_datetime": f"{day}T10:00:00.000000Z",
        "score": 0.25,
        "features": features,
    }


def test_a_feature_served_only_by_later_files_is_read(tmp_path: Path) -> None:
    """The first file (the earliest day's) has no `risk_2d` and a count as integers; a later
    one serves `risk_2d` and the count as floats. Every column is read, nulls where a file
    lacked it."""
    settings = load_settings(data_dir=tmp_path / "data", runtime_dir=tmp_path / "runtime")
    root = log_path(settings)
    write_chunk(records_frame([_body(1, "2026-09-23", {"count_1d": 3})]), root)
    later = [
        _body(2, "2026-09-24", {"count_1d": 4.0, "risk_2d": 0.5}),
        _body(3, "2026-09-24", {"count_1d": None, "risk_2d": 0.0}),
    ]
    write_chunk(records_frame(later), root)
    assert len(list(root.rglob("*.parquet"))) == 2
    # A sink killed mid-write leaves a partial file: not part of the log.
    (root / "served_date=2026-09-24" / "part-cut.partial").write_bytes(b"PAR1 cut short")

    frame = read_log(settings).sort_values("transaction_id").reset_index(drop=True)

    assert frame["transaction_id"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(frame["count_1d"].to_numpy(float), [3.0, 4.0, np.nan])
    np.testing.assert_array_equal(frame["risk_2d"].to_numpy(float), [np.nan, 0.5, 0.0])


def test_the_monitor_reads_the_events_of_the_version_that_served_most(tmp_path: Path) -> None:
    """Version 1 read no `risk_2d`; version 2 did. The window's checks compare with version 2's
    reference, so version 1's events (null `risk_2d`) are left out, not counted as skew."""
    settings = load_settings(data_dir=tmp_path / "data", runtime_dir=tmp_path / "runtime")
    root = log_path(settings)
    write_chunk(records_frame([_body(1, "2026-09-23", {"count_1d": 3.0})]), root)
    newer = [_body(k, "2026-09-24", {"count_1d": 1.0, "risk_2d": 0.0}, "2") for k in (2, 3)]
    write_chunk(records_frame(newer), root)

    served, version = served_window(settings, Window(None, None))

    assert version == "2"
    assert served["transaction_id"].tolist() == [2, 3]
    assert not served["risk_2d"].isna().any()


def _settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", runtime_dir=tmp_path / "runtime")


def test_a_window_reads_only_the_partitions_of_its_days(tmp_path: Path) -> None:
    """A broken file in a day outside the window is never opened; inside it, it is."""
    settings = _settings(tmp_path)
    root = log_path(settings)
    for day in ("2026-09-23", "2026-09-24", "2026-09-25"):
        write_chunk(records_frame([_body(int(day[-2:]), day, {"count_1d": 1.0})]), root)
    (root / "served_date=2026-09-25" / "part-broken.parquet").write_bytes(b"not parquet")
    assert log_days(settings) == [date(2026, 9, 23), date(2026, 9, 24), date(2026, 9, 25)]

    at = datetime(2026, 9, 24, tzinfo=UTC)
    frame = read_log(settings, at, at + timedelta(days=1))  # until: 09-25 00:00, excluded
    assert frame["transaction_id"].tolist() == [24]
    assert read_log(settings, until=at)["transaction_id"].tolist() == [23]
    with pytest.raises(pa.ArrowInvalid):
        read_log(settings, since=at)
    with pytest.raises(pa.ArrowInvalid):
        read_log(settings, at, at + timedelta(days=1, microseconds=1))


def test_a_read_lists_the_log_again_when_a_file_goes_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    root = log_path(settings)
    write_chunk(records_frame([_body(1, "2026-09-23", {"count_1d": 1.0})]), root)
    again = _body(1, "2026-09-23", {"count_1d": 2.0}, "2") | {"scored_at": "2026-09-24T00:00:00Z"}
    write_chunk(records_frame([again]), root)
    real = feature_log._read_files
    calls = []

    def compacted_meanwhile(paths: list[str]) -> pd.DataFrame:
        calls.append(paths)
        if len(calls) == 1:  # a compaction runs between the listing and the read
            monkeypatch.setattr(feature_log, "_read_files", real)
            compact(settings)
            monkeypatch.setattr(feature_log, "_read_files", compacted_meanwhile)
        return real(paths)

    monkeypatch.setattr(feature_log, "_read_files", compacted_meanwhile)
    frame = read_log(settings)
    assert len(calls) == 2 and len(calls[1]) == 1
    assert frame["model_version"].tolist() == ["2"]


def test_compaction_keeps_what_a_reader_reads_in_one_file_a_day(tmp_path: Path) -> None:
    """A replay scored transactions again (another version, later); one transaction was
    re-sent on another day; a later file serves a feature the first did not; a partial file
    stays. The log reads the same after, one file a day; again, nothing is left to do."""
    settings = _settings(tmp_path)
    root = log_path(settings)
    first = [_body(k, "2026-09-23", {"count_1d": k}) for k in (1, 2, 3)]
    write_chunk(records_frame(first), root)
    replay = [
        _body(k, "2026-09-23", {"count_1d": float(k), "risk_2d": 0.5}, "2") | {
            "scored_at": "2026-09-30T12:00:00Z", "score": 0.75,
        }
        for k in (2, 3)
    ]  # fmt: skip
    write_chunk(records_frame(replay), root)
    resent = _body(3, "2026-09-24", {"count_1d": 9.0}) | {"scored_at": "2026-10-01T00:00:00Z"}
    write_chunk(records_frame([resent, _body(4, "2026-09-24", {"count_1d": 4.0})]), root)
    write_chunk(records_frame([_body(5, "2026-09-24", {"count_1d": 5.0})]), root)
    (root / "served_date=2026-09-24" / "part-cut.partial").write_bytes(b"PAR1 cut short")
    at = datetime(2026, 9, 23, tzinfo=UTC)
    windows = [(None, None), (at, at + timedelta(days=1)), (at + timedelta(days=1), None)]
    before = [_sorted(read_log(settings, *window)) for window in windows]

    done = compact(settings)

    assert done == feature_log.Compaction(partitions=2, files=4, rows_before=8, rows_after=6)
    for window, expected in zip(windows, before, strict=True):
        pd.testing.assert_frame_equal(_sorted(read_log(settings, *window)), expected)
    assert [len(list(folder.glob("*.parquet"))) for folder in sorted(root.iterdir())] == [1, 1]
    cut = root / "served_date=2026-09-24" / "part-cut.partial"
    assert cut.exists()  # a sink may still be writing it
    assert compact(settings) == feature_log.Compaction(0, 0, 0, 0)
    hours_ago = time.time() - 2 * 3600
    os.utime(cut, (hours_ago, hours_ago))  # left by a sink that died
    assert compact(settings) == feature_log.Compaction(0, 0, 0, 0, stale_partials=1)
    assert not cut.exists()
    write_chunk(records_frame([_body(6, "2026-09-24", {"count_1d": 6.0})]), root)
    assert compact(settings, before=date(2026, 9, 24)).partitions == 0


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("transaction_id").reset_index(drop=True)


def test_the_champion_s_latest_event_is_found_from_the_latest_day_back(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    root = log_path(settings)
    write_chunk(records_frame([_body(1, "2026-09-22", {"count_1d": 1.0}, "3")]), root)
    write_chunk(records_frame([_body(2, "2026-09-23", {"count_1d": 1.0}, "3")]), root)
    write_chunk(records_frame([_body(3, "2026-09-24", {"count_1d": 1.0}, "4")]), root)
    (root / "served_date=2026-09-22" / "part-broken.parquet").write_bytes(b"never read")
    assert _latest_served_by(settings, "3") == pd.Timestamp("2026-09-23T10:00:00", tz="UTC")
    assert _latest_served_by(settings, "4") == pd.Timestamp("2026-09-24T10:00:00", tz="UTC")
