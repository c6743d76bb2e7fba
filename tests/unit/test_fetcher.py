"""Record batches decoded by the label fetcher equal what kafka-python's own builder wrote."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.structs import TopicPartition

from serving.fetcher import Fetched, FetchError, _decode_batches

TP = TopicPartition("labels", 0)


def _batch(base_offset: int, values: Sequence[bytes | None], compression: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=compression, is_transactional=False,
        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 30,
    )  # fmt: skip
    for delta, value in enumerate(values):
        key = None if delta % 2 else b"k%d" % delta
        headers = [("h", b"v")] if delta == 1 else []
        builder.append(delta, timestamp=1_700_000_000_000 + delta, key=key, value=value,
                       headers=headers)  # fmt: skip
    raw = bytearray(builder.build())
    raw[0:8] = base_offset.to_bytes(8, "big", signed=True)  # the broker assigns the offsets
    return bytes(raw)


def test_values_and_offsets_of_several_batches_including_long_and_empty_values() -> None:
    first = [b"a" * 300, None, b"", b"x" * 70_000]
    second = [b'{"n": %d}' % i for i in range(200)]
    buffer = _batch(10, first) + _batch(14, second)
    fetched = Fetched()
    assert _decode_batches(buffer, TP, 10, fetched) == 214
    assert fetched.values == [*first, *second]
    assert fetched.offsets == [(TP, offset) for offset in range(10, 214)]


def test_a_fetch_that_starts_inside_a_batch_skips_the_records_before_its_position() -> None:
    fetched = Fetched()
    assert _decode_batches(_batch(100, [b"1", b"2", b"3"]), TP, 102, fetched) == 103
    assert fetched.values == [b"3"]


def test_a_partial_batch_at_the_end_is_left_for_the_next_fetch() -> None:
    whole = _batch(0, [b"1", b"2"])
    fetched = Fetched()
    assert _decode_batches(whole + _batch(2, [b"3"])[:-5], TP, 0, fetched) == 2
    assert fetched.values == [b"1", b"2"]


@pytest.mark.parametrize("compression", [1, 2, 3, 4])  # gzip, snappy, lz4, zstd
def test_compressed_batches(compression: int) -> None:
    values = [b"label %d" % i for i in range(50)]
    fetched = Fetched()
    assert _decode_batches(_batch(0, values, compression), TP, 0, fetched) == 50
    assert fetched.values == values


def test_a_corrupt_batch_fails_its_crc_check() -> None:
    raw = bytearray(_batch(0, [b"label"]))
    raw[-3] ^= 0xFF
    with pytest.raises(FetchError, match="CRC"):
        _decode_batches(bytes(raw), TP, 0, Fetched())
