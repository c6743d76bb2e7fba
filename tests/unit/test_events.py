"""The wire format of the streaming topics: round trips, every rejection, dead letters."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from serving.events import (
    DEAD_LETTER_MAX_KEY_BYTES,
    DEAD_LETTER_MAX_ORIGINAL_BYTES,
    InvalidEvent,
    Label,
    Transaction,
    dead_letter,
    dead_letter_key,
    dead_letter_original,
    encode_label,
    encode_transaction,
    format_timestamp,
    label_key,
    parse_label,
    parse_labels,
    parse_transaction,
    parse_transactions,
    transaction_key,
)

WHEN = datetime(2026, 5, 1, 12, 0, 0, 123, tzinfo=UTC)
TX = Transaction(
    transaction_id=812_345, tx_datetime=WHEN, customer_id=4321, terminal_id=9876, tx_amount=57.25
)
LABEL = Label(
    transaction_id=812_345,
    customer_id=4321,
    terminal_id=9876,
    tx_datetime=WHEN,
    tx_fraud=1,
    label_time=WHEN + timedelta(days=7),
)


def _raw(**changes: Any) -> bytes:
    """A valid transaction with some fields changed (a value of ... removes the field)."""
    event: dict[str, Any] = json.loads(encode_transaction(TX))
    for name, value in changes.items():
        if value is ...:
            del event[name]
        else:
            event[name] = value
    return json.dumps(event).encode()


def _label_raw(**changes: Any) -> bytes:
    event: dict[str, Any] = json.loads(encode_label(LABEL))
    event.update(changes)
    return json.dumps(event).encode()


def _reason(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_transaction(raw)
    return caught.value.reason


def test_transaction_round_trip_and_wire_form() -> None:
    raw = encode_transaction(TX)
    assert parse_transaction(raw) == TX
    event = json.loads(raw)
    assert event == {
        "transaction_id": 812_345,
        "tx_datetime": "2026-05-01T12:00:00.000123Z",
        "customer_id": 4321,
        "terminal_id": 9876,
        "tx_amount": 57.25,
    }
    assert "tx_fraud" not in event


def test_label_round_trip_and_wire_form() -> None:
    raw = encode_label(LABEL)
    assert parse_label(raw) == LABEL
    event = json.loads(raw)
    assert event["label_time"] == "2026-05-08T12:00:00.000123Z"
    assert event["tx_fraud"] == 1


def test_keys_are_decimal_ascii_of_customer_and_terminal() -> None:
    assert transaction_key(TX) == b"4321"
    assert label_key(LABEL) == b"9876"


def test_amounts_survive_the_round_trip_exactly() -> None:
    for amount in (0.0, 0.1, 1e-7, 123456.789, 2.0**60):
        tx = Transaction(1, WHEN, 2, 3, amount)
        assert parse_transaction(encode_transaction(tx)).tx_amount == amount


def test_timestamps_are_utc_with_micros_and_z() -> None:
    assert format_timestamp(datetime(2026, 5, 1, 12, tzinfo=UTC)) == "2026-05-01T12:00:00.000000Z"
    assert format_timestamp(datetime(2026, 5, 1, 12)) == "2026-05-01T12:00:00.000000Z"
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 5, 1, 14, tzinfo=plus_two)) == (
        "2026-05-01T12:00:00.000000Z"
    )


@pytest.mark.parametrize(
    "text",
    [
        "2026-05-01T12:00:00.000123",
        "2026-05-01T12:00:00.000123+00:00",
        "2026-05-01 12:00:00.000123Z",
    ],
)
def test_naive_and_utc_offsets_are_accepted_as_utc(text: str) -> None:
    parsed = parse_transaction(_raw(tx_datetime=text))
    assert parsed.tx_datetime == WHEN
    assert parsed.tx_datetime.tzinfo is UTC


def test_unknown_fields_and_a_label_in_a_transaction_are_ignored() -> None:
    assert parse_transaction(_raw(tx_fraud=1, channel="web", extra={"a": [1]})) == TX


def test_integral_numbers_are_accepted_for_ids_and_amounts() -> None:
    parsed = parse_transaction(_raw(customer_id=4321.0, tx_amount=57))
    assert parsed.customer_id == 4321
    assert type(parsed.customer_id) is int
    assert parsed.tx_amount == 57.0
    assert type(parsed.tx_amount) is float


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe{}", "not_utf8: "),
        (b"{not json", "not_json: "),
        (b"", "not_json: "),
        (b'{"transaction_id": 1} trailing', "not_json: "),
        (b"[1, 2, 3]", "not_object: got a JSON array"),
        (b'"a string"', "not_object: got a JSON string"),
        (b"null", "not_object: got a JSON null"),
        (b"1" * 5000, "not_json: "),
    ],
)
def test_undecodable_events_are_rejected(raw: bytes, expected: str) -> None:
    assert _reason(raw).startswith(expected)


@pytest.mark.parametrize(
    "field", ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]
)
def test_a_missing_field_is_named(field: str) -> None:
    assert _reason(_raw(**{field: ...})) == f"missing_field: {field}"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"customer_id": True}, "wrong_type: customer_id must be an integer"),
        ({"terminal_id": False}, "wrong_type: terminal_id must be an integer"),
        ({"transaction_id": "812345"}, "wrong_type: transaction_id must be an integer"),
        ({"customer_id": 12.5}, "wrong_type: customer_id must be an integer"),
        ({"customer_id": None}, "wrong_type: customer_id must be an integer"),
        ({"customer_id": 2**63}, "out_of_range: customer_id outside int64"),
        ({"tx_amount": "12.5"}, "wrong_type: tx_amount must be a number"),
        ({"tx_amount": True}, "wrong_type: tx_amount must be a number"),
        ({"tx_amount": None}, "wrong_type: tx_amount must be a number"),
        ({"tx_datetime": 1_777_636_800}, "wrong_type: tx_datetime must be an ISO-8601 string"),
    ],
)
def test_mistyped_fields_are_named_with_the_expected_type(
    changes: dict[str, Any], expected: str
) -> None:
    assert _reason(_raw(**changes)) == expected


def test_negative_amount() -> None:
    assert _reason(_raw(tx_amount=-3.0)) == "negative_amount: -3.0"


@pytest.mark.parametrize(
    ("literal", "shown"), [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf")]
)
def test_non_finite_amount(literal: str, shown: str) -> None:
    raw = encode_transaction(TX).replace(b"57.25", literal.encode())
    assert _reason(raw) == f"non_finite_amount: {shown}"


def test_an_overflowing_amount_is_non_finite() -> None:
    raw = encode_transaction(TX).replace(b"57.25", b"1e999")
    assert _reason(raw) == "non_finite_amount: inf"


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("yesterday", "'yesterday'"),
        ("2026-13-01T00:00:00Z", "'2026-13-01T00:00:00Z'"),
        ("2026-05-01T14:00:00+02:00", "is not UTC"),
        ("", "''"),
    ],
)
def test_bad_timestamps(text: str, detail: str) -> None:
    reason = _reason(_raw(tx_datetime=text))
    assert reason.startswith("bad_timestamp: tx_datetime")
    assert detail in reason


def test_invalid_event_exposes_its_code() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_transaction(_raw(tx_amount=...))
    assert caught.value.code == "missing_field"
    assert str(caught.value) == "missing_field: tx_amount"


def test_labels_are_as_strict() -> None:
    cases = [
        (_label_raw(tx_fraud=2), "bad_label: tx_fraud must be 0 or 1, got 2"),
        (_label_raw(tx_fraud=True), "wrong_type: tx_fraud must be an integer"),
        (_label_raw(tx_fraud="1"), "wrong_type: tx_fraud must be an integer"),
        (_label_raw(terminal_id=False), "wrong_type: terminal_id must be an integer"),
        (_label_raw(label_time="soon"), "bad_timestamp: label_time 'soon'"),
        (_label_raw(label_time="2026-04-30T00:00:00Z"), "bad_label: label_time is before"),
        (b"[]", "not_object: got a JSON array"),
    ]
    for raw, expected in cases:
        with pytest.raises(InvalidEvent) as caught:
            parse_label(raw)
        assert caught.value.reason.startswith(expected), (raw, caught.value.reason)
    event = json.loads(encode_label(LABEL))
    del event["label_time"]
    with pytest.raises(InvalidEvent, match=r"^missing_field: label_time$"):
        parse_label(json.dumps(event).encode())


def test_dead_letter_keeps_the_original_bytes_and_says_where_from() -> None:
    raw = b'{"transaction_id": 1, "tx_amount": "12.5"}'
    failed_at = datetime(2026, 5, 2, 8, 30, tzinfo=UTC)
    reason = "wrong_type: tx_amount must be a number"
    record = dead_letter(raw, reason, "transactions", 1, 42, failed_at=failed_at)
    body = json.loads(record)
    assert body == {
        "reason": "wrong_type: tx_amount must be a number",
        "reason_code": "wrong_type",
        "source_topic": "transactions",
        "source_partition": 1,
        "source_offset": 42,
        "failed_at": "2026-05-02T08:30:00.000000Z",
        "original_b64": base64.b64encode(raw).decode(),
        "original_length": len(raw),
        "original_sha256": hashlib.sha256(raw).hexdigest(),
        "original_truncated": False,
        "original_text": raw.decode(),
    }
    assert dead_letter_original(record) == raw


def test_dead_letter_of_binary_garbage_has_no_text() -> None:
    raw = b"\x00\xff\xfe garbage"
    body = json.loads(dead_letter(raw, "not_utf8: invalid start byte", "transactions", 0, 7))
    assert "original_text" not in body
    assert base64.b64decode(body["original_b64"]) == raw
    failed_at = datetime.fromisoformat(body["failed_at"])
    assert abs(datetime.now(UTC) - failed_at) < timedelta(minutes=1)


BROKER_MAX_MESSAGE_BYTES = 1024 * 1024


def test_a_tombstone_is_rejected_not_raised() -> None:
    with pytest.raises(InvalidEvent, match=r"^tombstone: "):
        parse_transaction(None)
    with pytest.raises(InvalidEvent, match=r"^tombstone: "):
        parse_label(None)
    batch = parse_transactions([None, encode_transaction(TX), None])
    assert batch.rows.tolist() == [1]
    assert [(index, exc.code) for index, exc in batch.rejected] == [
        (0, "tombstone"),
        (2, "tombstone"),
    ]
    assert [exc.code for _, exc in parse_labels([None]).rejected] == ["tombstone"]


def test_an_amount_of_400_digits_is_too_large_not_an_overflow() -> None:
    raw = encode_transaction(TX).replace(b"57.25", b"9" * 400)
    assert _reason(raw) == "amount_too_large: an integer of 400 digits"
    batch = parse_transactions([encode_transaction(TX), raw])
    assert batch.rows.tolist() == [0]
    assert [exc.reason for _, exc in batch.rejected] == [
        "amount_too_large: an integer of 400 digits"
    ]


def test_the_dead_letter_of_a_tombstone_says_so() -> None:
    record = dead_letter(None, "tombstone: the record has no value", "transactions", 0, 3)
    body = json.loads(record)
    assert body["original_b64"] is None
    assert body["original_length"] == 0
    assert "original_text" not in body
    assert dead_letter_original(record) is None


@pytest.mark.parametrize("filler", [b"\x01", b"\xff", b"a"])  # worst JSON escaping, not UTF-8
def test_the_dead_letter_of_a_900_kb_value_fits_the_broker_and_identifies_it(filler: bytes) -> None:
    raw = filler * (900 * 1024)
    record = dead_letter(raw, "not_json: Expecting value at char 0", "transactions", 1, 9)
    assert len(record) < BROKER_MAX_MESSAGE_BYTES // 2
    body = json.loads(record)
    assert body["original_truncated"] is True
    assert body["original_length"] == len(raw)
    assert body["original_sha256"] == hashlib.sha256(raw).hexdigest()
    kept = base64.b64decode(body["original_b64"])
    assert kept == raw[:DEAD_LETTER_MAX_ORIGINAL_BYTES]
    assert "original_text" not in body
    with pytest.raises(InvalidEvent, match="was cut"):
        dead_letter_original(record)


def test_the_largest_uncut_original_with_text_still_fits() -> None:
    raw = b"\x01" * DEAD_LETTER_MAX_ORIGINAL_BYTES  # valid UTF-8, 6 characters each in JSON
    record = dead_letter(raw, "not_json: Expecting value at char 0", "transactions", 1, 9)
    assert len(record) < BROKER_MAX_MESSAGE_BYTES // 2
    assert json.loads(record)["original_text"] == raw.decode()
    assert dead_letter_original(record) == raw


def test_oversized_keys_are_not_reused_for_dead_letters() -> None:
    assert dead_letter_key(b"4321") == b"4321"
    assert dead_letter_key(None) is None
    assert dead_letter_key(b"k" * DEAD_LETTER_MAX_KEY_BYTES) == b"k" * DEAD_LETTER_MAX_KEY_BYTES
    assert dead_letter_key(b"k" * (DEAD_LETTER_MAX_KEY_BYTES + 1)) is None


def _odd_transactions() -> list[bytes]:
    """Events off the canonical form: each is either rejected or accepted by the strict rules."""
    canonical = encode_transaction(TX)
    return [
        b"\xff\xfe{}",
        b"{not json",
        b"",
        b"[1, 2, 3]",
        b"null",
        b"1" * 5000,
        canonical.replace(b"57.25", b"NaN"),
        canonical.replace(b"57.25", b"1e999"),
        canonical.replace(b"812345", b"18446744073709551615"),
        canonical.replace(b"812345", b"1" * 30),
        _raw(tx_amount=...),
        _raw(customer_id=True),
        _raw(customer_id=4321.0, tx_amount=57),
        _raw(customer_id=2**63),
        _raw(tx_amount=-3.0),
        _raw(tx_amount="12.5"),
        _raw(tx_datetime="2026-05-01T12:00:00.000123+00:00"),
        _raw(tx_datetime="2026-05-01 12:00:00.000123Z"),
        _raw(tx_datetime="2026-05-01T12:00:00.000123"),
        _raw(tx_datetime="2026-05-01T14:00:00.000123+02:00"),
        _raw(tx_datetime="2026-02-30T12:00:00.000123Z"),
        _raw(tx_datetime="2026-05-01T12:00:60.000000Z"),
        _raw(tx_datetime="2026-05-01T24:00:00.000000Z"),
        _raw(tx_datetime="0000-05-01T12:00:00.000000Z"),
        _raw(tx_datetime="2026-05-01T12:00:00.00012ZZ"),
        _raw(tx_datetime="2026-05-01T12:00:00Z"),
        _raw(tx_fraud=1, channel="web"),
        b'{"transaction_id": 1, "transaction_id": 812345, "tx_datetime": '
        b'"2026-05-01T12:00:00.000123Z", "customer_id": 4321, "terminal_id": 9876, '
        b'"tx_amount": 57.25}',
    ]


def _canonical_transactions(count: int) -> list[bytes]:
    return [
        encode_transaction(
            Transaction(i, WHEN + timedelta(seconds=i), i % 7, i % 5, i * 1.25 + 0.1)
        )
        for i in range(count)
    ]


def _strict(values: list[bytes], parse: Any) -> tuple[list[int], list[Any], dict[int, str]]:
    rows, parsed, reasons = [], [], {}
    for index, raw in enumerate(values):
        try:
            parsed.append(parse(raw))
            rows.append(index)
        except InvalidEvent as exc:
            reasons[index] = exc.reason
    return rows, parsed, reasons


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.parametrize("odd", range(-1, 28))
def test_batch_parsing_accepts_and_rejects_exactly_what_the_strict_parser_does(odd: int) -> None:
    """Each odd event, alone among canonical ones; and all of them at once (odd = -1)."""
    odd_events = _odd_transactions()
    assert len(odd_events) == 28
    chosen = odd_events if odd < 0 else [odd_events[odd]]
    values = _canonical_transactions(10)
    for position, raw in enumerate(chosen):
        values.insert(3 + 2 * position, raw)
    rows, parsed, reasons = _strict(values, parse_transaction)
    batch = parse_transactions(values)
    assert batch.rows.tolist() == rows
    assert {index: exc.reason for index, exc in batch.rejected} == reasons
    assert batch.columns["transaction_id"].tolist() == [tx.transaction_id for tx in parsed]
    assert batch.columns["customer_id"].tolist() == [tx.customer_id for tx in parsed]
    assert batch.columns["terminal_id"].tolist() == [tx.terminal_id for tx in parsed]
    assert batch.columns["tx_amount"].tolist() == [tx.tx_amount for tx in parsed]
    assert batch.columns["tx_datetime"].tolist() == [_micros(tx.tx_datetime) for tx in parsed]
    assert batch.columns["tx_datetime"].dtype == np.int64


def test_batch_parsing_of_canonical_events_and_of_nothing() -> None:
    values = _canonical_transactions(1000)
    batch = parse_transactions(values)
    assert batch.rows.tolist() == list(range(1000))
    assert batch.rejected == []
    assert batch.columns["tx_amount"][3] == 3 * 1.25 + 0.1
    assert batch.columns["tx_datetime"][1] == _micros(WHEN) + 1_000_000
    empty = parse_transactions([])
    assert len(empty) == 0
    assert set(empty.columns) == {"transaction_id", "tx_datetime", "customer_id",
                                  "terminal_id", "tx_amount"}  # fmt: skip


def test_batch_parsing_of_labels_matches_the_strict_parser() -> None:
    good = [encode_label(LABEL), _label_raw(tx_fraud=0, transaction_id=5)]
    odd = [
        _label_raw(tx_fraud=2),
        _label_raw(tx_fraud=True),
        _label_raw(label_time="2026-04-30T00:00:00.000000Z"),
        _label_raw(label_time="2026-05-08T12:00:00.000123+00:00"),
        b"[]",
    ]
    values = [good[0], *odd, good[1]]
    rows, parsed, reasons = _strict(values, parse_label)
    batch = parse_labels(values)
    assert batch.rows.tolist() == rows == [0, 4, 6]
    assert {index: exc.reason for index, exc in batch.rejected} == reasons
    assert batch.columns["tx_fraud"].tolist() == [label.tx_fraud for label in parsed]
    assert batch.columns["label_time"].tolist() == [_micros(label.label_time) for label in parsed]
    alone = parse_labels([odd[2]])
    assert [exc.reason for _, exc in alone.rejected] == [reasons[3]]
