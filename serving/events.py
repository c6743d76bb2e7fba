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
amounts must be JSON numbers (not strings, not booleans), finite and non-negative; ids must be
JSON integers in the int64 range (booleans are rejected; a float is accepted only if it has no
fractional part, e.g. `42.0`). Unknown fields are ignored, and so is a `tx_fraud` field in a
transaction. A rejected event raises `InvalidEvent` whose reason starts with a stable,
machine-readable code (`missing_field: tx_amount`); the codes are the `REASON_*` constants.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

REASON_NOT_UTF8 = "not_utf8"
REASON_NOT_JSON = "not_json"
REASON_NOT_OBJECT = "not_object"
REASON_MISSING_FIELD = "missing_field"
REASON_WRONG_TYPE = "wrong_type"
REASON_OUT_OF_RANGE = "out_of_range"
REASON_BAD_TIMESTAMP = "bad_timestamp"
REASON_NEGATIVE_AMOUNT = "negative_amount"
REASON_NON_FINITE_AMOUNT = "non_finite_amount"
REASON_BAD_LABEL = "bad_label"

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


def _load_object(raw: bytes) -> dict[str, Any]:
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
        amount = float(value)
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


def parse_transaction(raw: bytes) -> Transaction:
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


def parse_label(raw: bytes) -> Label:
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
    raw: bytes,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    failed_at: datetime | None = None,
) -> bytes:
    """The dead-letter record of a rejected event: the original bytes, where from and why.

    `original_b64` always holds the exact bytes; `original_text` is added when they are
    valid UTF-8, for people reading the topic. `failed_at` defaults to now (UTC).
    """
    record: dict[str, Any] = {
        "reason": reason,
        "reason_code": reason.split(":", 1)[0],
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "failed_at": format_timestamp(failed_at or datetime.now(UTC)),
        "original_b64": base64.b64encode(raw).decode("ascii"),
    }
    text = _utf8_or_none(raw)
    if text is not None:
        record["original_text"] = text
    return _ENCODER.encode(record).encode()


def _utf8_or_none(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def dead_letter_original(record: bytes) -> bytes:
    """The original bytes of a dead-letter record (for replaying it once fixed)."""
    try:
        return base64.b64decode(json.loads(record)["original_b64"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise InvalidEvent(f"{REASON_NOT_JSON}: not a dead-letter record ({exc})") from None
