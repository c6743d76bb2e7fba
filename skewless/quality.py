"""Data quality of raw transactions: one Great Expectations suite, run before anything else.

The suite checks the canonical schema of DESIGN.md (columns and types, no nulls, unique
`transaction_id`, non-negative amounts, labels in {0, 1}, timestamps that parse). A failed
validation names each failed expectation with the number of rows that failed it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

CANONICAL_TYPES: dict[str, tuple[str, ...]] = {
    "transaction_id": ("int64", "Int64"),
    # Validated as naive UTC: Great Expectations cannot name a tz-aware dtype in a type list.
    "tx_datetime": ("datetime64[us]", "datetime64[ns]", "datetime64[ms]"),
    "customer_id": ("int64", "Int64"),
    "terminal_id": ("int64", "Int64"),
    "tx_amount": ("float64", "Float64"),
    "tx_fraud": ("int8", "int16", "int32", "int64", "Int8", "Int64"),
}
"""Canonical columns and the pandas dtypes accepted for each."""

LABEL_COLUMN = "tx_fraud"


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that did not hold."""

    expectation: str
    column: str | None
    failed_rows: int | None
    detail: str

    def describe(self) -> str:
        where = f" on {self.column}" if self.column else ""
        rows = f": {self.failed_rows} rows failed" if self.failed_rows is not None else ""
        return f"{self.expectation}{where}{rows}{f' ({self.detail})' if self.detail else ''}"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of running the suite on one frame."""

    rows: int
    evaluated: int
    failures: tuple[FailedExpectation, ...] = field(default_factory=tuple)
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        if self.success:
            return f"{self.evaluated} expectations passed on {self.rows} rows"
        lines = [
            f"{len(self.failures)} of {self.evaluated} expectations failed on {self.rows} rows:"
        ]
        lines += [f"  - {failure.describe()}" for failure in self.failures]
        return "\n".join(lines)


def build_suite(columns: list[str], with_label: bool = True) -> Any:
    """The suite for a frame that has `columns`; per-column checks only for those present."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expected = {name: types for name, types in CANONICAL_TYPES.items()}
    if not with_label:
        expected.pop(LABEL_COLUMN)
    suite = gx.ExpectationSuite(name="raw_transactions")
    suite.add_expectation(
        gxe.ExpectTableColumnsToMatchSet(column_set=list(expected), exact_match=False)
    )
    for name, types in expected.items():
        if name not in columns:
            continue
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=name))
        suite.add_expectation(
            gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=list(types))
        )
    if "transaction_id" in columns:
        suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="transaction_id"))
    if "tx_amount" in columns:
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="tx_amount", min_value=0))
    if with_label and LABEL_COLUMN in columns:
        suite.add_expectation(
            gxe.ExpectColumnValuesToBeInSet(column=LABEL_COLUMN, value_set=[0, 1])
        )
    return suite


def validate_transactions(frame: pd.DataFrame, with_label: bool = True) -> ValidationReport:
    """Run the raw-transactions suite on `frame` in an ephemeral Great Expectations context."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm on stderr
    source = context.data_sources.add_pandas(name="raw")
    asset = source.add_dataframe_asset(name="transactions")
    batch_definition = asset.add_batch_definition_whole_dataframe("all")
    batch = batch_definition.get_batch(batch_parameters={"dataframe": _naive_utc(frame)})
    result = batch.validate(build_suite(list(frame.columns), with_label=with_label))
    described = result.describe_dict()
    failures = tuple(
        _failure(outcome) for outcome in described["expectations"] if not outcome["success"]
    )
    report = ValidationReport(
        rows=len(frame),
        evaluated=len(described["expectations"]),
        failures=failures,
        results=described["expectations"],
    )
    logger.info("data quality: %s", report.describe().splitlines()[0])
    return report


def _naive_utc(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with tz-aware timestamp columns converted to naive UTC (a shallow copy)."""
    aware = [name for name, dtype in frame.dtypes.items() if isinstance(dtype, pd.DatetimeTZDtype)]
    if not aware:
        return frame
    frame = frame.copy(deep=False)
    for name in aware:
        frame[name] = frame[name].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def _failure(outcome: dict[str, Any]) -> FailedExpectation:
    kwargs = outcome.get("kwargs") or {}
    result = outcome.get("result") or {}
    exception = outcome.get("exception_info") or {}
    detail = ""
    if outcome["expectation_type"] == "expect_table_columns_to_match_set":
        observed = set(result.get("observed_value") or [])
        missing = sorted(set(kwargs.get("column_set") or []) - observed)
        detail = f"missing columns: {', '.join(missing)}"
    elif outcome["expectation_type"] == "expect_column_values_to_be_in_type_list":
        detail = f"observed type {result.get('observed_value')}, expected one of " + ", ".join(
            kwargs.get("type_list") or []
        )
    elif outcome["expectation_type"] == "expect_column_values_to_not_be_null":
        detail = "null, or not parseable as the column's type"
    elif exception.get("raised_exception"):
        detail = str(exception.get("exception_message", ""))[:200]
    failed = result.get("unexpected_count")
    if failed is None and outcome["expectation_type"] == "expect_column_values_to_be_in_type_list":
        failed = result.get("element_count")
    return FailedExpectation(
        expectation=outcome["expectation_type"],
        column=kwargs.get("column"),
        failed_rows=int(failed) if failed is not None else None,
        detail=detail,
    )
