"""Which days an incremental backfill recomputes, and the record it keeps."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest

from skewless.aggregation import Function, Output, WindowAggregation
from training.incremental import (
    TableRecord,
    changed_days,
    declaration_fingerprint,
    dependent_days,
    plan_table,
    read_record,
    write_record,
)

DAY = timedelta(days=1)
START = date(2026, 4, 1)

DELAYED = WindowAggregation(
    name="delayed",
    entity="terminal",
    entity_key="terminal_id",
    windows_days=(2, 5),
    delay_days=3,
    outputs=(Output("n_{days}d", Function.COUNT),),
)
"""Another delay and widest window than the feature set's, so nothing is taken from there."""


def _days(first: int, last: int) -> set[date]:
    """Days START + first .. START + last, inclusive."""
    return {START + offset * DAY for offset in range(first, last + 1)}


def _fingerprints(days: set[date], value: str = "1:1") -> dict[date, str]:
    return dict.fromkeys(days, value)


def test_changed_days_are_added_removed_or_different() -> None:
    before = {START: "a", START + DAY: "b", START + 2 * DAY: "c"}
    after = {START: "a", START + DAY: "B", START + 3 * DAY: "d"}
    assert changed_days(before, after) == {START + DAY, START + 2 * DAY, START + 3 * DAY}
    assert changed_days(before, before) == set()


def test_a_change_reaches_the_days_whose_windows_cover_it() -> None:
    # Delay 3, widest window 5: day D itself, then D + 3 .. D + 8.
    assert dependent_days([START], DELAYED) == {START} | _days(3, 8)
    undelayed = replace(DELAYED, delay_days=0)
    assert dependent_days([START], undelayed) == _days(0, 5)
    assert dependent_days([], DELAYED) == set()


def test_plan_recomputes_changed_and_dependent_days_within_the_data() -> None:
    before = _fingerprints(_days(0, 19))
    after = before | {START + 2 * DAY: "2:2"} | _fingerprints(_days(20, 21))
    record = TableRecord(declaration_fingerprint(DELAYED), before)
    plan = plan_table(DELAYED, record, after, written_days=_days(0, 19))
    assert not plan.full
    # Day 2 and days 5..10 for the correction; the two new days (their dependents are later).
    assert plan.days == {START + 2 * DAY} | _days(5, 10) | _days(20, 21)
    assert plan.removed == set()


def test_plan_deletes_days_gone_from_the_data_and_recomputes_their_dependents() -> None:
    before = _fingerprints(_days(0, 19))
    after = _fingerprints(_days(1, 19))
    record = TableRecord(declaration_fingerprint(DELAYED), before)
    plan = plan_table(DELAYED, record, after, written_days=_days(0, 19))
    assert plan.removed == {START}
    assert plan.days == _days(3, 8)


def test_plan_recomputes_a_recorded_day_whose_partition_is_missing() -> None:
    days = _days(0, 19)
    record = TableRecord(declaration_fingerprint(DELAYED), _fingerprints(days))
    plan = plan_table(DELAYED, record, _fingerprints(days), written_days=days - _days(15, 15))
    assert plan.days == _days(15, 15) | _days(18, 19)
    assert plan_table(DELAYED, record, _fingerprints(days), written_days=days).unchanged


TEN_DAYS = _days(0, 9)


@pytest.mark.parametrize(
    ("record", "written", "reason"),
    [
        (None, TEN_DAYS, "no record"),
        (
            TableRecord(declaration_fingerprint(replace(DELAYED, delay_days=4)), {}),
            TEN_DAYS,
            "declaration changed",
        ),
        (TableRecord(declaration_fingerprint(DELAYED), _fingerprints(TEN_DAYS)), set(), "no table"),
    ],
)
def test_plan_is_full_without_a_record_of_the_same_declaration_or_a_table(
    record: TableRecord | None, written: set[date], reason: str
) -> None:
    plan = plan_table(DELAYED, record, _fingerprints(TEN_DAYS), written_days=written)
    assert plan.full
    assert plan.days == TEN_DAYS
    assert plan.reason == reason


def test_record_round_trips_and_ignores_another_format(tmp_path: Path) -> None:
    path = tmp_path / "features" / "_backfill_record.json"
    assert read_record(path) == {}
    tables = {"delayed": TableRecord("abc", {START: "3:12", START + DAY: "1:-5"})}
    write_record(path, tables)
    assert read_record(path) == tables
    assert not path.with_suffix(".partial").exists()
    path.write_text('{"format": 0, "tables": {}}')
    assert read_record(path) == {}
