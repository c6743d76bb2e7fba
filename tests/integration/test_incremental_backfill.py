"""An incremental backfill recomputes only the changed days and their horizon, and its tables
equal those of a full backfill of the same data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from pyspark.sql import SparkSession

from skewless.aggregation import Function, WindowAggregation
from skewless.data import write_transactions
from skewless.feature_store import load_declarations, offline_table_path
from skewless.settings import Settings, load_settings
from skewless.simulator import SimulationParams, simulate
from training.backfill import PARTITION_COLUMN, TableBackfill, backfill
from training.spark import spark_session

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
START = date(2026, 4, 1)
FIRST_DAYS, ALL_DAYS = 45, 48
"""The first backfill sees 45 days; three more arrive before the incremental one."""
AMOUNT_FIX_DAY, LATE_LABEL_DAY = 10, 5
"""Days of the first 45 corrected afterwards: some amounts, and some labels arriving late."""


def _settings(root: Path) -> Settings:
    return load_settings(
        data_dir=root / "data",
        runtime_dir=root / "runtime",
        feature_repo=REPO_ROOT / "feature_repo",
    )


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    environment = dict(os.environ)
    session = spark_session(_settings(tmp_path_factory.mktemp("spark")))
    os.environ.clear()
    os.environ.update(environment)
    yield session


def _day(offset: int) -> date:
    return START + timedelta(days=offset)


def _days(first: int, last: int) -> set[date]:
    return {_day(offset) for offset in range(first, last + 1)}


def _expected_days(declaration: WindowAggregation, changed: list[int]) -> set[date]:
    """A changed day D and the days D + delay .. D + delay + widest window, within the data."""
    delay, widest = declaration.delay_days, max(declaration.windows_days)
    days: set[date] = set()
    for offset in changed:
        days |= _days(offset, offset) | _days(offset + delay, offset + delay + widest)
    return days & _days(0, ALL_DAYS - 1)


def _files(table: Path) -> dict[str, set[str]]:
    return {
        folder.name: {file.name for file in folder.glob("*.parquet")}
        for folder in table.iterdir()
        if folder.is_dir()
    }


def _table(table: Path, declaration: WindowAggregation) -> pd.DataFrame:
    frame = ds.dataset(table, format="parquet", partitioning="hive").to_table().to_pandas()
    return frame.sort_values(declaration.order_key).reset_index(drop=True)


@pytest.fixture(scope="module")
def backfills(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, Settings, list[TableBackfill], dict[str, dict[str, set[str]]]]:
    """A full backfill of 45 days, then an incremental one after three new days and two
    corrections; beside it a full backfill of the final data."""
    root = tmp_path_factory.mktemp("incremental")
    params = SimulationParams(n_customers=60, n_terminals=120, n_days=ALL_DAYS, start_date=START)
    final = simulate(params).transactions
    dates = final["tx_datetime"].dt.date
    first = final[dates < _day(FIRST_DAYS)]
    amount_fix = (dates == _day(AMOUNT_FIX_DAY)).to_numpy().nonzero()[0][:5]
    late_labels = (dates == _day(LATE_LABEL_DAY)).to_numpy().nonzero()[0][:5]
    final.loc[final.index[amount_fix], "tx_amount"] += 1.0
    final.loc[final.index[late_labels], "tx_fraud"] = (
        1 - final.loc[final.index[late_labels], "tx_fraud"]
    )
    incremental, full = _settings(root / "incremental"), _settings(root / "full")
    backfill(incremental, write_transactions(first, root / "first.parquet"))
    tables = [d.name for d in load_declarations(incremental)]
    before = {name: _files(offline_table_path(incremental, name)) for name in tables}
    final_path = write_transactions(final, root / "final.parquet")
    results = backfill(incremental, final_path, incremental=True)
    backfill(full, final_path)
    return incremental, full, results, before


def test_only_changed_days_and_their_horizon_are_recomputed(
    backfills: tuple[Settings, Settings, list[TableBackfill], dict[str, dict[str, set[str]]]],
) -> None:
    settings, _, results, before = backfills
    new_days = list(range(FIRST_DAYS, ALL_DAYS))
    for result in results:
        declaration = {d.name: d for d in load_declarations(settings)}[result.name]
        # A label is read by the terminal windows only, an amount by the customer windows.
        reads = declaration.value_columns
        corrected = [LATE_LABEL_DAY] if "tx_fraud" in reads else [AMOUNT_FIX_DAY]
        assert not result.full
        expected = _expected_days(declaration, corrected + new_days)
        assert result.days == expected, result.name
        assert expected < _days(0, ALL_DAYS - 1)  # some days were left alone
        after = _files(offline_table_path(settings, result.name))
        for offset in range(FIRST_DAYS):
            folder = f"{PARTITION_COLUMN}={_day(offset).isoformat()}"
            rewritten = after[folder] != before[result.name][folder]
            assert rewritten == (_day(offset) in expected), (result.name, folder)
        assert {f"{PARTITION_COLUMN}={_day(d).isoformat()}" for d in new_days} <= set(after)


def test_incremental_tables_equal_a_full_backfill(
    backfills: tuple[Settings, Settings, list[TableBackfill], dict[str, dict[str, set[str]]]],
) -> None:
    incremental, full, _, _ = backfills
    for declaration in load_declarations(incremental):
        actual = _table(offline_table_path(incremental, declaration.name), declaration)
        expected = _table(offline_table_path(full, declaration.name), declaration)
        assert len(actual) == len(expected) > 0
        assert list(actual.columns) == list(expected.columns)
        for name, output in declaration.features:
            if output.function is Function.COUNT:
                np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
            else:  # the running sums start from other events: rounding differs only
                np.testing.assert_allclose(actual[name], expected[name], rtol=1e-9, err_msg=name)
        keys = [declaration.entity_key, declaration.event_time, declaration.order_key]
        pd.testing.assert_frame_equal(actual[keys], expected[keys])
        assert (
            actual[PARTITION_COLUMN].astype(str) == expected[PARTITION_COLUMN].astype(str)
        ).all()
