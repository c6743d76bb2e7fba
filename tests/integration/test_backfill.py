"""The Spark backfill against the pure reference, on simulated data plus hand-made edge cases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from skewless.aggregation import Function, Output, WindowAggregation
from skewless.data import write_transactions
from skewless.feature_store import (
    EMPTY_PART,
    ensure_offline_tables,
    load_declarations,
    offline_table_path,
    offline_table_schema,
)
from skewless.reference import window_aggregates
from skewless.settings import Settings, load_settings
from skewless.simulator import SimulationParams, simulate
from skewless.spark import spark_session
from training.backfill import PARTITION_COLUMN, run_backfill, window_features

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY = pd.Timedelta(days=1)
MICRO = pd.Timedelta(microseconds=1)

# Hand-made entities and ids, far outside the simulator's ranges.
EDGE_CUSTOMER = 9_000_001
EDGE_TERMINAL = 9_000_002
BYSTANDER = 9_000_003
FIRST_EDGE_ID = 900_000_000
TWIN_LOW, TWIN_HIGH = FIRST_EDGE_ID + 100, FIRST_EDGE_ID + 101
TERMINAL_ANCHOR, TERMINAL_TWIN = FIRST_EDGE_ID + 200, FIRST_EDGE_ID + 201
TERMINAL_FIRST = FIRST_EDGE_ID + 10

DELAYED_AMOUNTS = WindowAggregation(
    name="test_delayed_amounts",
    entity="customer",
    entity_key="customer_id",
    windows_days=(2, 5),
    delay_days=2,
    outputs=(
        Output("n_{days}d", Function.COUNT),
        Output("avg_amount_{days}d", Function.MEAN, column="tx_amount", empty_value=-1.0),
        Output("fraud_share_{days}d", Function.MEAN, column="tx_fraud", empty_value=0.5),
    ),
)
"""Not part of the feature set: another delay, other windows, two columns, non-zero defaults."""


@pytest.fixture(scope="session")
def backfill_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    folder = tmp_path_factory.mktemp("backfill")
    return load_settings(
        data_dir=folder / "data",
        runtime_dir=folder / "runtime",
        feature_repo=REPO_ROOT / "feature_repo",
    )


@pytest.fixture(scope="session")
def spark(backfill_settings: Settings) -> Iterator[SparkSession]:
    environment = dict(os.environ)
    session = spark_session(backfill_settings)
    # The JVM has started with the exported variables; later tests see the environment as it was.
    os.environ.clear()
    os.environ.update(environment)
    yield session
    session.stop()


def _edge_rows(anchor: pd.Timestamp) -> pd.DataFrame:
    """Events exactly on the window bounds of fraud_model_v1, before `anchor`."""
    rows = [
        # The customer (no delay): exactly 30, 7 and 1 days before the anchors, one just inside.
        (FIRST_EDGE_ID + 1, anchor - 30 * DAY, EDGE_CUSTOMER, BYSTANDER, 1000.0, 0),
        (FIRST_EDGE_ID + 2, anchor - 30 * DAY + MICRO, EDGE_CUSTOMER, BYSTANDER, 300.0, 0),
        (FIRST_EDGE_ID + 3, anchor - 7 * DAY, EDGE_CUSTOMER, BYSTANDER, 70.0, 0),
        (FIRST_EDGE_ID + 4, anchor - 1 * DAY, EDGE_CUSTOMER, BYSTANDER, 10.0, 0),
        # Two events at the same instant, the later id first in the file.
        (TWIN_HIGH, anchor, EDGE_CUSTOMER, BYSTANDER, 4.0, 0),
        (TWIN_LOW, anchor, EDGE_CUSTOMER, BYSTANDER, 2.0, 0),
        # The terminal (7-day delay): exactly d + 30, d + 7, d + 1 and d days before the anchor.
        (TERMINAL_FIRST, anchor - 37 * DAY, BYSTANDER, EDGE_TERMINAL, 20.0, 1),
        (FIRST_EDGE_ID + 11, anchor - 37 * DAY + MICRO, BYSTANDER, EDGE_TERMINAL, 20.0, 1),
        (FIRST_EDGE_ID + 12, anchor - 14 * DAY, BYSTANDER, EDGE_TERMINAL, 20.0, 1),
        (FIRST_EDGE_ID + 13, anchor - 8 * DAY, BYSTANDER, EDGE_TERMINAL, 20.0, 0),
        (FIRST_EDGE_ID + 14, anchor - 7 * DAY, BYSTANDER, EDGE_TERMINAL, 20.0, 1),
        (FIRST_EDGE_ID + 15, anchor - 7 * DAY + MICRO, BYSTANDER, EDGE_TERMINAL, 20.0, 1),
        (TERMINAL_TWIN, anchor, BYSTANDER, EDGE_TERMINAL, 20.0, 1),
        (TERMINAL_ANCHOR, anchor, BYSTANDER, EDGE_TERMINAL, 20.0, 0),
        # Either side of midnight UTC, for the date partitions.
        (FIRST_EDGE_ID + 20, anchor.normalize() - MICRO, BYSTANDER, BYSTANDER, 5.0, 0),
        (FIRST_EDGE_ID + 21, anchor.normalize(), BYSTANDER, BYSTANDER, 5.0, 0),
    ]
    columns = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]
    frame = pd.DataFrame(rows, columns=[*columns, "tx_fraud"])
    return frame.astype({"tx_fraud": "int8", "tx_datetime": "datetime64[us, UTC]"})


@pytest.fixture(scope="session")
def transactions() -> pd.DataFrame:
    params = SimulationParams(n_customers=60, n_terminals=120, n_days=50)
    simulated = simulate(params).transactions
    anchor = simulated["tx_datetime"].min().normalize() + 45 * DAY + pd.Timedelta(hours=12)
    edges = _edge_rows(anchor)
    assert simulated["transaction_id"].max() < FIRST_EDGE_ID
    assert not simulated["customer_id"].isin([EDGE_CUSTOMER, BYSTANDER]).any()
    assert not simulated["terminal_id"].isin([EDGE_TERMINAL, BYSTANDER]).any()
    frame = pd.concat([simulated, edges.astype(simulated.dtypes.to_dict())], ignore_index=True)
    assert frame["transaction_id"].is_unique
    return frame


@pytest.fixture(scope="session")
def raw_path(transactions: pd.DataFrame, backfill_settings: Settings) -> Path:
    return write_transactions(transactions, backfill_settings.data_dir / "raw" / "tx.parquet")


def _declarations(settings: Settings) -> dict[str, WindowAggregation]:
    return {declaration.name: declaration for declaration in load_declarations(settings)}


def _computed(spark: SparkSession, raw_path: Path, declaration: WindowAggregation) -> pd.DataFrame:
    frame = window_features(spark.read.parquet(str(raw_path)), declaration).toPandas()
    return frame.set_index(declaration.order_key)


def _reference(transactions: pd.DataFrame, declaration: WindowAggregation) -> pd.DataFrame:
    """The reference's features, indexed by order key."""
    expected = window_aggregates(transactions, declaration)
    expected.index = pd.Index(transactions[declaration.order_key].to_numpy())
    return expected


def _assert_matches_reference(
    actual: pd.DataFrame, transactions: pd.DataFrame, declaration: WindowAggregation
) -> None:
    """Counts exactly equal, means within 1e-9 relative, for every transaction once."""
    expected = _reference(transactions, declaration)
    assert actual.index.is_unique
    assert sorted(actual.index) == sorted(expected.index)
    actual = actual.loc[expected.index]
    np.testing.assert_array_equal(
        actual[declaration.entity_key].to_numpy(), transactions[declaration.entity_key].to_numpy()
    )
    for output in declaration.outputs:
        for days in declaration.windows_days:
            name = output.feature_name(days)
            if output.function is Function.COUNT:
                assert actual[name].dtype == np.int64, name
                np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
            else:
                assert actual[name].dtype == np.float64, name
                np.testing.assert_allclose(
                    actual[name], expected[name], rtol=1e-9, atol=0, err_msg=name
                )


@pytest.mark.parametrize("name", ["customer_spending", "terminal_risk"])
def test_backfill_equals_reference(
    spark: SparkSession,
    backfill_settings: Settings,
    transactions: pd.DataFrame,
    raw_path: Path,
    name: str,
) -> None:
    declaration = _declarations(backfill_settings)[name]
    _assert_matches_reference(_computed(spark, raw_path, declaration), transactions, declaration)


@pytest.mark.parametrize("name", ["customer_spending", "terminal_risk"])
def test_backfill_and_reference_give_the_same_bits(
    spark: SparkSession,
    backfill_settings: Settings,
    transactions: pd.DataFrame,
    raw_path: Path,
    name: str,
) -> None:
    """Sums are of whole units (`decimals`), so exact: the engines agree to the last bit."""
    declaration = _declarations(backfill_settings)[name]
    expected = _reference(transactions, declaration)
    actual = _computed(spark, raw_path, declaration).loc[expected.index]
    for feature in declaration.feature_names:
        np.testing.assert_array_equal(actual[feature], expected[feature], err_msg=feature)


def test_values_are_rounded_to_the_declared_decimals_half_to_even(spark: SparkSession) -> None:
    declaration = replace(DELAYED_AMOUNTS, windows_days=(2,), delay_days=0, decimals=0)
    start = pd.Timestamp("2026-06-01", tz="UTC")
    frame = pd.DataFrame({
        "transaction_id": [1, 2, 3, 4],
        "tx_datetime": [start + k * MICRO for k in range(4)],
        "customer_id": [7, 7, 7, 7],
        "tx_amount": [2.5, 3.5, 0.5, 1.25],  # (in units: 2, 4, 0, 1)
        "tx_fraud": [0.4, 0.6, 1.0, 0.0],  # (0, 1, 1, 0)
    })  # fmt: skip
    want = pd.DataFrame({
        "avg_amount_2d": [2.0, 3.0, 2.0, 1.75],
        "fraud_share_2d": [0.0, 0.5, 2 / 3, 0.5],
    }, index=frame["transaction_id"])  # fmt: skip
    computed = window_features(spark.createDataFrame(frame), declaration).toPandas()
    computed = computed.set_index("transaction_id").loc[want.index]
    reference = window_aggregates(frame, declaration).set_axis(frame["transaction_id"])
    for got in (computed, reference):
        np.testing.assert_array_equal(got[want.columns].to_numpy(), want.to_numpy())


def test_other_windows_delay_and_empty_values_follow_the_declaration(
    spark: SparkSession, transactions: pd.DataFrame, raw_path: Path
) -> None:
    actual = _computed(spark, raw_path, DELAYED_AMOUNTS)
    _assert_matches_reference(actual, transactions, DELAYED_AMOUNTS)
    empty = actual["n_5d"] == 0
    assert empty.any()
    assert (actual.loc[empty, "avg_amount_5d"] == -1.0).all()
    assert (actual.loc[empty, "fraud_share_5d"] == 0.5).all()


def test_customer_bounds_and_same_instant_by_hand(
    spark: SparkSession, backfill_settings: Settings, raw_path: Path
) -> None:
    """1, 7 and 30 days before are outside the windows; the later twin sees the earlier."""
    declaration = _declarations(backfill_settings)["customer_spending"]
    assert (declaration.windows_days, declaration.delay_days) == ((1, 7, 30), 0)
    actual = _computed(spark, raw_path, declaration)
    low, high = actual.loc[TWIN_LOW], actual.loc[TWIN_HIGH]
    assert [low[f"customer_tx_count_{days}d"] for days in (1, 7, 30)] == [1, 2, 4]
    assert [high[f"customer_tx_count_{days}d"] for days in (1, 7, 30)] == [2, 3, 5]
    assert low["customer_avg_amount_1d"] == pytest.approx(2.0)
    assert low["customer_avg_amount_7d"] == pytest.approx((10 + 2) / 2)
    assert low["customer_avg_amount_30d"] == pytest.approx((300 + 70 + 10 + 2) / 4)
    assert high["customer_avg_amount_1d"] == pytest.approx((2 + 4) / 2)
    assert high["customer_avg_amount_30d"] == pytest.approx((300 + 70 + 10 + 2 + 4) / 5)


def test_terminal_delayed_bounds_by_hand(
    spark: SparkSession, backfill_settings: Settings, raw_path: Path
) -> None:
    """d days before is inside; d + 1, d + 7, d + 30 days before are outside their windows
    (and d + 14 is inside the 14- and 21-day windows, d + 1 inside the 2- and 3-day ones)."""
    declaration = _declarations(backfill_settings)["terminal_risk"]
    windows = (1, 2, 3, 7, 14, 21, 30)
    assert (declaration.windows_days, declaration.delay_days) == (windows, 7)
    actual = _computed(spark, raw_path, declaration)
    for anchor in (TERMINAL_ANCHOR, TERMINAL_TWIN):
        row = actual.loc[anchor]
        assert [row[f"terminal_tx_count_{days}d"] for days in windows] == [1, 2, 2, 2, 3, 3, 4]
        risks = [row[f"terminal_risk_{days}d"] for days in windows]
        assert risks == [1.0, 0.5, 0.5, 0.5, 2 / 3, 2 / 3, 0.75]
    first = actual.loc[TERMINAL_FIRST]
    assert [first[f"terminal_tx_count_{days}d"] for days in windows] == [0] * 7
    assert [first[f"terminal_risk_{days}d"] for days in windows] == [0.0] * 7


def test_run_backfill_writes_partitioned_tables(
    spark: SparkSession,
    backfill_settings: Settings,
    transactions: pd.DataFrame,
    raw_path: Path,
) -> None:
    declarations = _declarations(backfill_settings)
    ensure_offline_tables(backfill_settings, tuple(declarations.values()))
    rows = run_backfill(backfill_settings, raw_path)
    assert rows == dict.fromkeys(declarations, len(transactions))
    utc_dates = {f"{PARTITION_COLUMN}={day}" for day in transactions["tx_datetime"].dt.date}
    for name, declaration in declarations.items():
        folder = offline_table_path(backfill_settings, name)
        assert not (folder / EMPTY_PART).exists()
        assert {part.name for part in folder.iterdir() if part.is_dir()} == utc_dates
        # Names and types as declared; Spark writes the counts as required (non-null) fields.
        declared = [(field.name, field.type) for field in offline_table_schema(declaration)]
        for file in folder.rglob("*.parquet"):
            assert [(field.name, field.type) for field in pq.read_schema(file)] == declared
        table = ds.dataset(folder, format="parquet", partitioning="hive").to_table()
        assert table.schema.names == [*(name for name, _ in declared), PARTITION_COLUMN]
        assert not any(column.null_count for column in table.columns)
        written = table.to_pandas().set_index(declaration.order_key)
        assert len(written) == len(transactions)
        event_dates = written[declaration.event_time].dt.date.astype(str)
        assert (written[PARTITION_COLUMN].astype(str) == event_dates).all()
        _assert_matches_reference(written, transactions, declaration)
