"""Which days of an offline table a backfill must recompute, from what the last one saw.

Every backfill records, next to the offline tables, one fingerprint per declaration and UTC
day of the raw transactions: the day's row count and the sum of a hash of each row's columns
that the declaration reads (its entity key, event time, order key and value columns). A day
whose fingerprint is new, gone or different has changed: rows were added or removed, or a
value was corrected, e.g. a label that arrived late.

A change on day D moves the features of every event whose windows reach back to D. For a
declaration with delay `d` and widest window `w` (days), an event at `e` on D lies in the
windows of the events at `t` with `e + d <= t < e + d + w`, i.e. on days D + d to D + d + w,
and D itself holds the changed rows. Both numbers come from the declaration alone.

This module is pure: the Spark side (fingerprints, partial writes) is `training.backfill`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from skewless.aggregation import WindowAggregation

RECORD_FILE = "_backfill_record.json"
"""The record's file name, beside the table folders (Spark and pyarrow skip `_` files)."""
RECORD_FORMAT = 1

DayFingerprints = Mapping[date, str]


@dataclass(frozen=True)
class TableRecord:
    """What one table was computed from: the declaration and the raw days it saw."""

    declaration: str
    """`declaration_fingerprint` of the declaration that computed the table."""
    days: dict[date, str]


@dataclass(frozen=True)
class TablePlan:
    """What a backfill does for one table: everything, some days, or nothing."""

    name: str
    full: bool
    days: frozenset[date]
    """Days to recompute (every day of the data when `full`)."""
    removed: frozenset[date]
    """Days in the table whose raw rows are gone: their partitions are deleted."""
    reason: str

    @property
    def unchanged(self) -> bool:
        return not self.full and not self.days and not self.removed


def declaration_fingerprint(declaration: WindowAggregation) -> str:
    """sha256 of the declaration's fields: another window, delay or output recomputes all."""
    return hashlib.sha256(repr(declaration).encode()).hexdigest()


def changed_days(before: DayFingerprints, after: DayFingerprints) -> set[date]:
    """Days added, removed or with another fingerprint."""
    return {day for day in before.keys() | after.keys() if before.get(day) != after.get(day)}


def dependent_days(changed: Iterable[date], declaration: WindowAggregation) -> set[date]:
    """The changed days and every day whose windows of `declaration` reach back to one."""
    delay, widest = declaration.delay_days, max(declaration.windows_days)
    days: set[date] = set()
    for day in changed:
        days.add(day)
        days.update(day + timedelta(days=offset) for offset in range(delay, delay + widest + 1))
    return days


def plan_table(
    declaration: WindowAggregation,
    previous: TableRecord | None,
    fingerprints: DayFingerprints,
    written_days: set[date],
) -> TablePlan:
    """The days of `declaration`'s table to recompute for raw days with `fingerprints`.

    `written_days` are the day partitions the table holds now: a recorded day whose partition
    is missing counts as changed. Without a record for the same declaration, or without any
    partition (a new or emptied table), everything.
    """
    current = set(fingerprints)
    if previous is None:
        return TablePlan(declaration.name, True, frozenset(current), frozenset(), "no record")
    if previous.declaration != declaration_fingerprint(declaration):
        reason = "declaration changed"
        return TablePlan(declaration.name, True, frozenset(current), frozenset(), reason)
    if not written_days:
        return TablePlan(declaration.name, True, frozenset(current), frozenset(), "no table")
    changed = changed_days(previous.days, fingerprints)
    changed |= {day for day in previous.days if day in current and day not in written_days}
    days = dependent_days(changed, declaration) & current
    removed = (set(previous.days) | written_days) - current
    reason = f"changed days: {len(changed)}" if changed else "unchanged"
    return TablePlan(declaration.name, False, frozenset(days), frozenset(removed), reason)


def read_record(path: Path) -> dict[str, TableRecord]:
    """The record at `path` per table name; empty if there is none or it is of another format."""
    if not path.exists():
        return {}
    body = json.loads(path.read_text())
    if body.get("format") != RECORD_FORMAT:
        return {}
    return {
        name: TableRecord(
            declaration=table["declaration"],
            days={date.fromisoformat(day): value for day, value in table["days"].items()},
        )
        for name, table in body["tables"].items()
    }


def write_record(path: Path, tables: Mapping[str, TableRecord]) -> Path:
    """Write the record atomically (a crash leaves the old one, so the next run redoes more)."""
    body = {
        "format": RECORD_FORMAT,
        "tables": {
            name: {
                "declaration": record.declaration,
                "days": {day.isoformat(): value for day, value in sorted(record.days.items())},
            }
            for name, record in sorted(tables.items())
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(body, indent=1))
    partial.replace(path)
    return path
