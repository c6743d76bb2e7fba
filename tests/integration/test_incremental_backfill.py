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
from skewless.spark import spark_session
from training.backfill import PARTITION_COLUMN, TableBackfill, backfill

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
START = date(2026, 4, 1)
FIRST_DAYS, SECOND_DAYS, ALL_DAYS = 45, 48, 49
"""The first backfill sees 45 days; three more arrive before the first incremental one, and
one more before the second, whose windows then reach back into the middle of the data."""
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


def _expected_days(declaration: WindowAggregation, changed: list[int], days: int) -> set[date]:
    """A changed day D and the days D + delay .. D + delay + widest window, within `days`."""
    delay, widest = declaration.delay_days, max(declaration.windows_days)
    result: set[date] = set()
    for offset in changed:
        result |= _days(offset, offset) | _days(offset + delay, offset + delay + widest)
    return result & _days(0, days - 1)


Files = dict[str, set[str]]
"""File names per day folder of a table."""


def _files(table: Path) -> Files:
    return {
        folder.name: {file.name for file in folder.glob("*.parquet")}
        for folder in table.iterdir()
        if folder.is_dir()
    }


def _table(table: Path, declaration: WindowAggregation) -> pd.DataFrame:
    frame = ds.dataset(table, format="parquet", partitioning="hive").to_table().to_pandas()
    return frame.sort_values(declaration.order_key).reset_index(drop=True)


Backfills = tuple[Settings, Settings, list[TableBackfill], list[TableBackfill], dict[str, Files]]


@pytest.fixture(scope="module")
def backfills(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Backfills:
    """A full backfill of 45 days; an incremental one after three new days and two
    corrections; another after one more day. Beside them a full backfill of the final data."""
    root = tmp_path_factory.mktemp("incremental")
    params = SimulationParams(n_customers=60, n_terminals=120, n_days=ALL_DAYS, start_date=START)
    final = simulate(params).transactions
    dates = final["tx_datetime"].dt.date
    amount_fix = final.index[dates == _day(AMOUNT_FIX_DAY)][:5]
    late_labels = final.index[dates == _day(LATE_LABEL_DAY)][:5]
    first = final[dates < _day(FIRST_DAYS)]
    final.loc[amount_fix, "tx_amount"] += 1.0
    final.loc[late_labels, "tx_fraud"] = 1 - final.loc[late_labels, "tx_fraud"]
    second = final[dates < _day(SECOND_DAYS)]
    incremental, full = _settings(root / "incremental"), _settings(root / "full")
    backfill(incremental, write_transactions(first, root / "first.parquet"))
    tables = [declaration.name for declaration in load_declarations(incremental)]
    before = {name: _files(offline_table_path(incremental, name)) for name in tables}
    second_path = write_transactions(second, root / "second.parquet")
    corrected = backfill(incremental, second_path, incremental=True)
    final_path = write_transactions(final, root / "final.parquet")
    one_more_day = backfill(incremental, final_path, incremental=True)
    backfill(full, final_path)
    return incremental, full, corrected, one_more_day, before


def test_only_changed_days_and_their_horizon_are_recomputed(backfills: Backfills) -> None:
    settings, _, corrected, one_more_day, before = backfills
    new_days = list(range(FIRST_DAYS, SECOND_DAYS))
    for result in corrected:
        declaration = {d.name: d for d in load_declarations(settings)}[result.name]
        # A label is read by the terminal windows only, an amount by the customer windows.
        reads = declaration.value_columns
        corrections = [LATE_LABEL_DAY] if "tx_fraud" in reads else [AMOUNT_FIX_DAY]
        assert not result.full
        expected = _expected_days(declaration, corrections + new_days, SECOND_DAYS)
        assert result.days == expected, result.name
        assert expected < _days(0, SECOND_DAYS - 1)  # some days were left alone
        after = _files(offline_table_path(settings, result.name))
        for offset in range(FIRST_DAYS):
            folder = f"{PARTITION_COLUMN}={_day(offset).isoformat()}"
            rewritten = after[folder] != before[result.name][folder]
            assert rewritten == (_day(offset) in expected), (result.name, folder)
        assert {f"{PARTITION_COLUMN}={_day(d).isoformat()}" for d in new_days} <= set(after)
    # The last day alone; its windows read the days before it, which are not rewritten.
    assert {result.name: result.days for result in one_more_day} == {
        result.name: {_day(ALL_DAYS - 1)} for result in corrected
    }


def test_incremental_tables_equal_a_full_backfill(backfills: Backfills) -> None:
    incremental, full, _, _, _ = backfills
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
