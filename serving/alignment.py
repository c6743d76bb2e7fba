"""Read a worker's partitions in step, in event time.

Kafka orders events within a partition only, and a consumer with a backlog on several
partitions reads them unevenly: kafka-python hands out one partition's fetched records (a
fetch, or a producer's record batch, of thousands of events) before the next partition's, so
one partition can be read days of event time ahead of another. Validation allows for that
(its stream time is per partition), but the streaming state does not: an entity whose events
come from several partitions (a terminal, fed by every customer's partition) has one
watermark, moved by the latest event it computed, and the state drops what lies more than the
allowed lateness behind it. The windows of the partition read behind then reach below what the
state kept and are served as unknown (NaN), where the backfill has values.

So the records polled from a partition are *put back* (the worker seeks the partition to the
first of them, to read them again later) while its stream time (`serving.validation`) is more
than `max_skew_us` ahead of another partition of the worker that still has records to read.
The partition furthest behind is never held back, so reading always goes on; a partition
whose stream time is not known yet (none of its events read since the start) that has records
to read holds back every partition whose time is known, until its first batch is read. A
partition with nothing to read holds nobody back: the stream's producers, not the worker,
decide how far behind it will be. (`KafkaConsumer.pause` would do this without reading the
records twice, but kafka-python 3.0.12 never hands out again the records it had fetched for a
partition paused in the middle of them, once the partition is resumed.)
"""

from __future__ import annotations

from collections.abc import Mapping


def held_back(
    stream_times: Mapping[int, int | None], waiting: Mapping[int, bool], max_skew_us: int
) -> set[int]:
    """The partitions to hold back: those more than `max_skew_us` ahead of a partition with
    records waiting (module doc).

    `stream_times`: each partition's stream time in microseconds, None if not known yet;
    `waiting`: whether each partition has records left to read (unknown counts as True).
    """
    behind = [stream_times.get(p) for p, has_records in waiting.items() if has_records]
    if not behind:
        return set()
    known = {p: t for p, t in stream_times.items() if t is not None}
    if any(t is None for t in behind):
        return set(known)
    floor = min(t for t in behind if t is not None)
    return {p for p, t in known.items() if t > floor + max_skew_us}
