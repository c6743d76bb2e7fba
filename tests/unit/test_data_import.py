"""`skewless data import`: a valid file is stored, a corrupted one is rejected with a report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from skewless.data import DataError, dataset_path, import_transactions, read_transactions
from skewless.settings import Settings, load_settings
from skewless.simulator import SimulationParams, simulate
from skewless_cli.cli import app


@pytest.fixture(scope="module")
def valid() -> pd.DataFrame:
    params = SimulationParams(n_customers=40, n_terminals=80, n_days=10)
    return simulate(params).transactions


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", runtime_dir=tmp_path / "runtime")


def test_valid_parquet_is_imported(valid: pd.DataFrame, settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "good.parquet"
    valid.to_parquet(source)
    result = import_transactions(source, settings, name="good")
    assert result.report.success
    assert result.path == dataset_path(settings, "good")
    stored = read_transactions(result.path)
    pd.testing.assert_frame_equal(stored, valid.reset_index(drop=True), check_dtype=False)
    assert str(stored["tx_datetime"].dtype) == "datetime64[us, UTC]"
    assert (result.path.parent / "validation.json").exists()


def test_valid_csv_is_imported(valid: pd.DataFrame, settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "good.csv"
    valid.assign(tx_datetime=valid["tx_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(
        source, index=False
    )
    result = import_transactions(source, settings)
    assert result.report.success
    assert len(read_transactions(result.path)) == len(valid)


def _negative_amount(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[frame.index[:3], "tx_amount"] = -1.0
    return frame


def _duplicate_ids(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[frame.index[1], "transaction_id"] = frame.loc[frame.index[0], "transaction_id"]
    return frame


def _wrong_type(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(customer_id=frame["customer_id"].astype(str) + "x")


def _missing_column(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["terminal_id"])


def _bad_label(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[frame.index[:2], "tx_fraud"] = 2
    return frame


def _unparseable_time(frame: pd.DataFrame) -> pd.DataFrame:
    text = frame["tx_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").copy()
    text.iloc[:4] = "yesterday"
    return frame.assign(tx_datetime=text)


@pytest.mark.parametrize(
    ("corrupt", "expectation", "column", "rows"),
    [
        (_negative_amount, "expect_column_values_to_be_between", "tx_amount", 3),
        (_duplicate_ids, "expect_column_values_to_be_unique", "transaction_id", 2),
        (_wrong_type, "expect_column_values_to_be_in_type_list", "customer_id", None),
        (_missing_column, "expect_table_columns_to_match_set", None, None),
        (_bad_label, "expect_column_values_to_be_in_set", "tx_fraud", 2),
        (_unparseable_time, "expect_column_values_to_not_be_null", "tx_datetime", 4),
    ],
)
def test_corrupted_file_is_rejected_with_report(
    valid: pd.DataFrame,
    settings: Settings,
    tmp_path: Path,
    corrupt: Callable[[pd.DataFrame], pd.DataFrame],
    expectation: str,
    column: str | None,
    rows: int | None,
) -> None:
    source = tmp_path / "bad.parquet"
    corrupt(valid.copy()).to_parquet(source)
    with pytest.raises(DataError) as caught:
        import_transactions(source, settings, name="bad")
    message = str(caught.value)
    failures = [line for line in message.splitlines() if expectation in line]
    assert failures, message
    if column:
        assert f"on {column}" in failures[0]
    if rows is not None:
        assert f"{rows} rows failed" in failures[0]
    if column is None:
        assert "terminal_id" in failures[0]
    assert not dataset_path(settings, "bad").parent.exists(), "nothing may be half-imported"


def test_cli_reports_and_exits_non_zero(
    valid: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKEWLESS_DATA_DIR", str(tmp_path / "data"))
    source = tmp_path / "bad.parquet"
    _negative_amount(valid.copy()).to_parquet(source)
    result = CliRunner().invoke(app, ["data", "import", str(source)])
    assert result.exit_code == 1
    assert "expect_column_values_to_be_between on tx_amount: 3 rows failed" in result.output
    good = tmp_path / "good.parquet"
    valid.to_parquet(good)
    result = CliRunner().invoke(app, ["data", "import", str(good)])
    assert result.exit_code == 0, result.output
    assert "expectations passed" in result.output
