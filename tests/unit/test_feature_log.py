"""The online log read back across files that served different features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monitoring.feature_log import log_path, read_log, records_frame, write_chunk
from monitoring.monitor import Window, served_window
from skewless.settings import load_settings


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
