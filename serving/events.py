"""The wire format of the streaming topics: transaction and label events, dead letters.

Pure functions, no I/O. Every event is one JSON object in UTF-8:

- `transactions` carries the canonical raw schema minus the label: `transaction_id`,
  `tx_datetime`, `customer_id`, `terminal_id`, `tx_amount`. Records are keyed by
  `customer_id` (decimal ASCII), so all events of one card holder land in one partition, in
  the order they were produced; the streaming customer windows rely on it.
- `fraud-labels` carries `transaction_id`, `customer_id`, `terminal_id`, `tx_datetime`,
  `tx_fraud` (0 or 1) and `label_time` (when the label became known). Records are keyed by
  `terminal_id`, the entity of the label-based windows.

Timestamps are written as ISO-8601 UTC with microseconds and a trailing `Z`
(`2026-05-01T12:00:00.000000Z`). Parsing accepts any ISO-8601 form `datetime.fromisoformat`
reads, with a UTC offset or none (naive means UTC); another offset is rejected.

Parsing is strict, because a wrong type here would become a wrong feature downstream:
amounts must be JSON numbers (not strings, not booleans), finite and non-negative (an integer
too large for a float64 is `amount_too_large`; the upper bound itself is a setting, applied by
`serving.validation`); ids must be
JSON integers in the int64 range (booleans are rejected; a float is accepted only if it has no
fractional part, e.g. `42.0`). Unknown fields are ignored, and so is a `tx_fraud` field in a
transaction. A rejected event raises `InvalidEvent` whose reason starts with a stable,
machine-readable code (`missing_field: tx_amount`); the codes are the `REASON_*` constants.
A record without a value (a tombstone, `None`) is rejected as `tombstone`.

Identity (the rule the streaming state, the Spark backfill and the reference share): a
transaction is its `transaction_id`. The state counts each transaction once, in the last
version it received: a transaction sent again with another amount or time replaces the earlier
version in its customer's windows, and one sent again unchanged changes nothing. A label is the
label of the transaction it names and counts at that transaction's time: a corrected label
(0 then 1) replaces the earlier one. A label counts only for a transaction its terminal's state
knows (the worker may read labels ahead of their transactions: such a label waits in the state
until its transaction is scored); one still waiting when it is older than the state keeps
(`SKEWLESS_STATE_ALLOWED_LATENESS_S` behind the horizon) goes to the dead-letter topic as
`label_unknown_transaction`, rebuilt from the state. A label published (its Kafka timestamp)
before its `label_time` is not known yet by its own account: `label_before_label_time`. The
offline data hold one row per `transaction_id` (the import refuses repeated ids) with its
label, i.e. exactly the last versions, so the backfill and the reference compute what the
state serves. A transaction sent again under another customer or terminal is, for the state, a
new transaction of that entity (the earlier entity keeps its version until its horizon passes).

The worker parses whole micro-batches with `parse_transactions` and `parse_labels`, which give
columns. They decode with orjson and check types column by column; an event in the canonical
form (the form `encode_transaction` writes) never goes through the per-event functions. Any
event the fast path is not sure of goes through `parse_transaction` / `parse_label`, which
define the rules, so both paths accept and reject exactly the same events with the same values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from skewless.stream_state import RefusedEvent

REASON_NOT_UTF8 = "not_utf8"
REASON_NOT_JSON = "not_json"
REASON_NOT_OBJECT = "not_object"
REASON_MISSING_FIELD = "missing_field"
REASON_WRONG_TYPE = "wrong_type"
REASON_OUT_OF_RANGE = "out_of_range"
REASON_BAD_TIMESTAMP = "bad_timestamp"
REASON_NEGATIVE_AMOUNT = "negative_amount"
REASON_NON_FINITE_AMOUNT = "non_finite_amount"
REASON_PROCESSING_FAILED = "processing_failed"
"""The event made scoring fail on its own (found by bisecting its batch); the error follows."""
REASON_BAD_LABEL = "bad_label"
REASON_TOMBSTONE = "tombstone"
REASON_AMOUNT_TOO_LARGE = "amount_too_large"
REASON_LABEL_BEFORE_LABEL_TIME = "label_before_label_time"
REASON_LABEL_UNKNOWN_TRANSACTION = "label_unknown_transaction"

DEAD_LETTER_MAX_ORIGINAL_BYTES = 64 * 1024
"""A dead-letter record keeps at most this many bytes of the original value (the first ones).

With base64 (4/3) and the optional text (at most 6 characters a byte when JSON-escaped) the
record stays under 512 KiB, well inside the broker's 1 MiB `message.max.bytes`. A cut original
is still identified by its length and sha256, which every dead-letter record carries."""
DEAD_LETTER_MAX_KEY_BYTES = 1024
"""Source keys longer than this are not reused as the dead-letter record's key."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_EXACT_FLOAT_INT = 2**53
_ZERO = timedelta(0)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder()


class InvalidEvent(ValueError):  # noqa: N818 - the name the serving code and DLQ use
    """An event that cannot be parsed; `reason` is `"<code>: <detail>"`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def code(self) -> str:
        """The machine-readable part of the reason, e.g. `missing_field`."""
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class Transaction:
    """One card transaction as it travels on the `transactions` topic (no label)."""

    transaction_id: int
    tx_datetime: datetime
    customer_id: int
    terminal_id: int
    tx_amount: float


@dataclass(frozen=True, slots=True)
class Label:
    """The fraud label of one transaction, published once it is known at `label_time`."""

    transaction_id: int
    customer_id: int
    terminal_id: int
    tx_datetime: datetime
    tx_fraud: int
    label_time: datetime


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and `Z`; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        return moment.isoformat(timespec="microseconds") + "Z"
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


def iso_times(micros: np.ndarray) -> list[str]:
    """`format_timestamp` of many times at once, given as microseconds since the epoch."""
    text = np.datetime_as_string(np.asarray(micros, dtype="datetime64[us]"), unit="us")
    return [moment + "Z" for moment in text.tolist()]


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_transaction(tx: Transaction) -> bytes:
    """The JSON value of a transaction record; a non-finite amount raises `ValueError`."""
    return _ENCODER.encode(
        {
            "transaction_id": tx.transaction_id,
            "tx_datetime": format_timestamp(tx.tx_datetime),
            "customer_id": tx.customer_id,
            "terminal_id": tx.terminal_id,
            "tx_amount": tx.tx_amount,
        }
    ).encode()


def encode_label(label: Label) -> bytes:
    """The JSON value of a label record."""
    return _ENCODER.encode(
        {
            "transaction_id": label.transaction_id,
            "customer_id": label.customer_id,
            "terminal_id": label.terminal_id,
            "tx_datetime": format_timestamp(label.tx_datetime),
            "tx_fraud": label.tx_fraud,
            "label_time": format_timestamp(label.label_time),
        }
    ).encode()


def transaction_key(tx: Transaction) -> bytes:
    """Record key of a transaction: its customer id in decimal ASCII."""
    return str(tx.customer_id).encode("ascii")


def label_key(label: Label) -> bytes:
    """Record key of a label: its terminal id in decimal ASCII."""
    return str(label.terminal_id).encode("ascii")


def _load_object(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise InvalidEvent(f"{REASON_TOMBSTONE}: the record has no value")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"{REASON_NOT_UTF8}: {exc.reason} at byte {exc.start}") from None
    try:
        event = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"{REASON_NOT_JSON}: {exc.msg} at char {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 5,000 digits, deep nesting
        raise InvalidEvent(f"{REASON_NOT_JSON}: {type(exc).__name__}") from None
    if type(event) is not dict:
        raise InvalidEvent(f"{REASON_NOT_OBJECT}: got a JSON {_json_type(event)}")
    return event


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _missing(event: dict[str, Any], fields: tuple[str, ...]) -> InvalidEvent:
    name = next(field for field in fields if field not in event)
    return InvalidEvent(f"{REASON_MISSING_FIELD}: {name}")


def _integer(value: object, name: str) -> int:
    if type(value) is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
        raise InvalidEvent(f"{REASON_OUT_OF_RANGE}: {name} outside int64")
    if type(value) is float and value.is_integer() and abs(value) <= _EXACT_FLOAT_INT:
        return int(value)
    raise InvalidEvent(f"{REASON_WRONG_TYPE}: {name} must be an integer")


def _amount(value: object) -> float:
    if type(value) is float:
        amount = value
    elif type(value) is int:
        try:
            amount = float(value)
        except OverflowError:  # e.g. an integer of 400 digits
            raise InvalidEvent(
                f"{REASON_AMOUNT_TOO_LARGE}: an integer of {len(str(abs(value)))} digits"
            ) from None
    else:
        raise InvalidEvent(f"{REASON_WRONG_TYPE}: tx_amount must be a number")
    if not math.isfinite(amount):
        raise InvalidEvent(f"{REASON_NON_FINITE_AMOUNT}: {amount}")
    if amount < 0.0:
        raise InvalidEvent(f"{REASON_NEGATIVE_AMOUNT}: {amount}")
    return amount


def _timestamp(value: object, name: str) -> datetime:
    if type(value) is not str:
        raise InvalidEvent(f"{REASON_WRONG_TYPE}: {name} must be an ISO-8601 string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"{REASON_BAD_TIMESTAMP}: {name} {value[:40]!r}") from None
    zone = moment.tzinfo
    if zone is UTC:
        return moment
    if zone is None:
        return moment.replace(tzinfo=UTC)
    if moment.utcoffset() == _ZERO:
        return moment.replace(tzinfo=UTC)
    raise InvalidEvent(f"{REASON_BAD_TIMESTAMP}: {name} {value[:40]!r} is not UTC")


_TRANSACTION_FIELDS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
_LABEL_FIELDS = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "tx_datetime",
    "tx_fraud",
    "label_time",
)


def parse_transaction(raw: bytes | None) -> Transaction:
    """Parse a transaction record's value, or raise `InvalidEvent` saying why not."""
    event = _load_object(raw)
    try:
        transaction_id = event["transaction_id"]
        tx_datetime = event["tx_datetime"]
        customer_id = event["customer_id"]
        terminal_id = event["terminal_id"]
        tx_amount = event["tx_amount"]
    except KeyError:
        raise _missing(event, _TRANSACTION_FIELDS) from None
    return Transaction(
        _integer(transaction_id, "transaction_id"),
        _timestamp(tx_datetime, "tx_datetime"),
        _integer(customer_id, "customer_id"),
        _integer(terminal_id, "terminal_id"),
        _amount(tx_amount),
    )


def parse_label(raw: bytes | None) -> Label:
    """Parse a label record's value, or raise `InvalidEvent` saying why not."""
    event = _load_object(raw)
    try:
        values = [event[field] for field in _LABEL_FIELDS]
    except KeyError:
        raise _missing(event, _LABEL_FIELDS) from None
    transaction_id, customer_id, terminal_id, tx_datetime, tx_fraud, label_time = values
    fraud = _integer(tx_fraud, "tx_fraud")
    if fraud not in (0, 1):
        raise InvalidEvent(f"{REASON_BAD_LABEL}: tx_fraud must be 0 or 1, got {fraud}")
    label = Label(
        _integer(transaction_id, "transaction_id"),
        _integer(customer_id, "customer_id"),
        _integer(terminal_id, "terminal_id"),
        _timestamp(tx_datetime, "tx_datetime"),
        fraud,
        _timestamp(label_time, "label_time"),
    )
    if label.label_time < label.tx_datetime:
        raise InvalidEvent(f"{REASON_BAD_LABEL}: label_time is before tx_datetime")
    return label


def dead_letter(
    raw: bytes | None,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    failed_at: datetime | None = None,
) -> bytes:
    """The dead-letter record of a rejected event: the original bytes, where from and why.

    `original_b64` holds the exact bytes, or their first `DEAD_LETTER_MAX_ORIGINAL_BYTES` when
    the original is longer (`original_truncated` is then true); `original_length` and
    `original_sha256` always describe the whole original. `original_text` is added when the
    kept bytes are the whole original and valid UTF-8, for people reading the topic. A
    tombstone (`raw` is None) has `original_b64` null and length 0. `failed_at` defaults to now.
    """
    original = raw or b""
    kept = original[:DEAD_LETTER_MAX_ORIGINAL_BYTES]
    record: dict[str, Any] = {
        "reason": reason,
        "reason_code": reason.split(":", 1)[0],
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "failed_at": format_timestamp(failed_at or datetime.now(UTC)),
        "original_b64": None if raw is None else base64.b64encode(kept).decode("ascii"),
        "original_length": len(original),
        "original_sha256": hashlib.sha256(original).hexdigest(),
        "original_truncated": len(kept) < len(original),
    }
    text = _utf8_or_none(original) if len(kept) == len(original) else None
    if text is not None and raw is not None:
        record["original_text"] = text
    return _ENCODER.encode(record).encode()


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The key of a dead-letter record: the source record's key, unless it is oversized."""
    if key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES:
        return None
    return key


def _utf8_or_none(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def dead_letter_original(record: bytes) -> bytes | None:
    """The original bytes of a dead-letter record (for replaying it once fixed).

    None for a tombstone; a cut original raises `InvalidEvent` (it cannot be replayed).
    """
    try:
        body = json.loads(record)
        truncated = bool(body.get("original_truncated"))
        encoded = body["original_b64"]
        original = None if encoded is None else base64.b64decode(encoded, validate=True)
    except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise InvalidEvent(f"{REASON_NOT_JSON}: not a dead-letter record ({exc})") from None
    if truncated:
        length = body.get("original_length")
        raise InvalidEvent(f"{REASON_OUT_OF_RANGE}: the original ({length} bytes) was cut")
    return original


@dataclass(frozen=True)
class ParsedBatch:
    """A micro-batch of events: the accepted ones as columns, the others with their reasons.

    `rows` are the positions of the accepted events in the input, ascending; `columns` holds one
    array per field, in that order (ids as int64, timestamps as int64 microseconds since the
    epoch, amounts as float64). `rejected` pairs a position with why it was rejected.
    """

    rows: np.ndarray
    columns: dict[str, np.ndarray]
    rejected: list[tuple[int, InvalidEvent]]

    def __len__(self) -> int:
        return len(self.rows)

    def without(self, drop: np.ndarray, reasons: Sequence[str]) -> ParsedBatch:
        """This batch with the accepted events where `drop` is true moved to `rejected`.

        `drop` has one flag per accepted event; `reasons` one reason per dropped event, in order.
        """
        dropped = self.rows[drop].tolist()
        if not dropped:
            return self
        keep = ~drop
        rejected = self.rejected + [
            (int(row), InvalidEvent(reason)) for row, reason in zip(dropped, reasons, strict=True)
        ]
        return ParsedBatch(
            self.rows[keep],
            {name: column[keep] for name, column in self.columns.items()},
            sorted(rejected, key=lambda item: item[0]),
        )


_INT = "int"
_TIME = "time"
_AMOUNT = "amount"
_FLAG = "flag"
_CANONICAL_TIME_DTYPE = np.dtype("U26")  # "2026-05-01T12:00:00.000123" without the "Z"


def parse_transactions(values: Sequence[bytes | None]) -> ParsedBatch:
    """Parse a batch of transaction values (see the module doc)."""
    return _parse_batch(values, _TRANSACTION_KINDS, _transaction_row)


def parse_labels(values: Sequence[bytes | None]) -> ParsedBatch:
    """Parse a batch of label values (see the module doc)."""
    batch = _parse_batch(values, _LABEL_KINDS, _label_row)
    early = batch.columns["label_time"] < batch.columns["tx_datetime"]
    reason = f"{REASON_BAD_LABEL}: label_time is before tx_datetime"
    return batch.without(early, [reason] * int(early.sum()))


def without_early_labels(batch: ParsedBatch, published_ms: Sequence[int]) -> ParsedBatch:
    """`batch` (labels) with those published before their `label_time` rejected.

    `published_ms` holds each input record's Kafka timestamp in milliseconds, by position; a
    label published within the millisecond of its `label_time` is in time.
    """
    published = np.asarray(published_ms, dtype=np.int64)[batch.rows]
    early = (published + 1) * 1000 <= batch.columns["label_time"]
    reasons = [
        f"{REASON_LABEL_BEFORE_LABEL_TIME}: published at {at}, before its label_time {known}"
        for at, known in zip(
            iso_times(published[early] * 1000),
            iso_times(batch.columns["label_time"][early]),
            strict=True,
        )
    ]
    return batch.without(early, reasons)


def unknown_label_dead_letter(event: RefusedEvent, entity_key: str, topic: str) -> bytes:
    """The dead-letter record of a label the state refused, rebuilt from what the state kept
    of it (the original record was committed long before): the label's transaction id, entity,
    claimed transaction time and values."""
    values = {name: int(v) if float(v).is_integer() else v for name, v in event.values.items()}
    label = {
        "transaction_id": event.transaction_id,
        entity_key: event.entity_id,
        "tx_datetime": iso_times(np.asarray([event.event_time]))[0],
        **values,
    }
    reason = (
        f"{REASON_LABEL_UNKNOWN_TRANSACTION}: no transaction {event.transaction_id} of "
        f"{entity_key} {event.entity_id} within the state's horizon ({event.declaration})"
    )
    return dead_letter(json.dumps(label).encode(), reason, topic, -1, -1)


_TRANSACTION_KINDS = {
    "transaction_id": _INT,
    "tx_datetime": _TIME,
    "customer_id": _INT,
    "terminal_id": _INT,
    "tx_amount": _AMOUNT,
}
_LABEL_KINDS = {
    "transaction_id": _INT,
    "customer_id": _INT,
    "terminal_id": _INT,
    "tx_datetime": _TIME,
    "tx_fraud": _FLAG,
    "label_time": _TIME,
}


def _transaction_row(raw: bytes | None) -> tuple[object, ...]:
    tx = parse_transaction(raw)
    return (
        tx.transaction_id,
        epoch_micros(tx.tx_datetime),
        tx.customer_id,
        tx.terminal_id,
        tx.tx_amount,
    )


def _label_row(raw: bytes | None) -> tuple[object, ...]:
    label = parse_label(raw)
    return (
        label.transaction_id,
        label.customer_id,
        label.terminal_id,
        epoch_micros(label.tx_datetime),
        label.tx_fraud,
        epoch_micros(label.label_time),
    )


def _parse_batch(
    values: Sequence[bytes | None],
    kinds: dict[str, str],
    strict_row: Callable[[bytes | None], tuple[object, ...]],
) -> ParsedBatch:
    """Fast path for the batch, the strict per-event parser for whatever it is unsure of."""
    pick = itemgetter(*kinds)
    fast_rows: list[int] = []
    fast: list[tuple[Any, ...]] = []
    unsure: list[int] = []
    for index, raw in enumerate(values):
        if raw is None:  # a tombstone: the strict parser says why not
            unsure.append(index)
            continue
        try:
            fast.append(pick(orjson.loads(raw)))
            fast_rows.append(index)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            unsure.append(index)
    columns = _fast_columns(fast, kinds)
    if columns is None:  # a value of an unexpected type or form: the strict parser decides
        unsure = list(range(len(values)))
        fast_rows = []
        columns = _empty_columns(kinds)
    if not unsure:
        return ParsedBatch(np.asarray(fast_rows, dtype=np.int64), columns, [])
    strict: list[tuple[object, ...]] = []
    strict_rows: list[int] = []
    rejected: list[tuple[int, InvalidEvent]] = []
    for index in unsure:
        try:
            strict.append(strict_row(values[index]))
            strict_rows.append(index)
        except InvalidEvent as exc:
            rejected.append((index, exc))
    rows = np.asarray(fast_rows + strict_rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    merged = {}
    for position, (name, kind) in enumerate(kinds.items()):
        extra = np.asarray([row[position] for row in strict], dtype=_DTYPES[kind])
        merged[name] = np.concatenate([columns[name], extra])[order]
    return ParsedBatch(rows[order], merged, rejected)


_DTYPES = {_INT: np.int64, _TIME: np.int64, _AMOUNT: np.float64, _FLAG: np.int64}


def _empty_columns(kinds: dict[str, str]) -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype=_DTYPES[kind]) for name, kind in kinds.items()}


def _fast_columns(
    rows: list[tuple[Any, ...]], kinds: dict[str, str]
) -> dict[str, np.ndarray] | None:
    """Columns of the decoded rows if every value is in the canonical form, else None."""
    if not rows:
        return _empty_columns(kinds)
    columns: dict[str, np.ndarray] = {}
    for name, values in zip(kinds, zip(*rows, strict=True), strict=True):
        column = _FAST[kinds[name]](values)
        if column is None:
            return None
        columns[name] = column
    return columns


def _fast_times(values: tuple[Any, ...]) -> np.ndarray | None:
    """Microseconds of canonical timestamps (`2026-05-01T12:00:00.000123Z`), else None."""
    if set(map(type, values)) != {str}:
        return None
    text = np.asarray(values)
    if text.dtype != np.dtype("U27") or not np.char.endswith(text, "Z").all():
        return None
    canonical = text.astype(_CANONICAL_TIME_DTYPE)
    if (np.char.find(canonical, "Z") >= 0).any():  # shorter than the form, or a zone inside
        return None
    try:
        moments = canonical.astype("datetime64[us]")
    except ValueError:
        return None
    # numpy must have read exactly this form, and a year Python's datetime has
    exact = (np.datetime_as_string(moments, unit="us") == canonical).all()
    return moments.astype(np.int64) if exact and (moments >= _FIRST_YEAR).all() else None


def _fast_amounts(values: tuple[Any, ...]) -> np.ndarray | None:
    if not set(map(type, values)) <= {float, int}:
        return None
    try:
        amounts = np.asarray(values, dtype=np.float64)
    except OverflowError:
        return None
    if not (np.isfinite(amounts).all() and (amounts >= 0.0).all()):
        return None
    return amounts


def _fast_integers(values: tuple[Any, ...]) -> np.ndarray | None:
    if set(map(type, values)) != {int}:
        return None
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        return None


def _fast_flags(values: tuple[Any, ...]) -> np.ndarray | None:
    flags = _fast_integers(values)
    if flags is None or not ((flags == 0) | (flags == 1)).all():
        return None
    return flags


_FIRST_YEAR = np.datetime64("0001-01-01T00:00:00", "us")
_FAST = {_INT: _fast_integers, _TIME: _fast_times, _AMOUNT: _fast_amounts, _FLAG: _fast_flags}
