"""Which partitions a worker holds back so that it reads its partitions in step (event time)."""

from __future__ import annotations

from serving.alignment import held_back

DAY = 86_400 * 1_000_000


def test_a_partition_too_far_ahead_of_one_with_records_waiting_is_held_back() -> None:
    times = {0: 10 * DAY, 1: 25 * DAY}
    assert held_back(times, {0: True, 1: True}, 3 * DAY) == {1}


def test_partitions_within_the_skew_are_all_read() -> None:
    times = {0: 10 * DAY, 1: 13 * DAY, 2: 11 * DAY}
    assert held_back(times, {0: True, 1: True, 2: True}, 3 * DAY) == set()


def test_the_partition_furthest_behind_is_never_held_back() -> None:
    times = {0: 10 * DAY, 1: 25 * DAY, 2: 40 * DAY}
    assert held_back(times, {0: True, 1: True, 2: True}, 0) == {1, 2}


def test_a_partition_behind_with_nothing_to_read_holds_nobody_back() -> None:
    times = {0: 10 * DAY, 1: 25 * DAY}
    assert held_back(times, {0: False, 1: True}, 3 * DAY) == set()
    assert held_back(times, {0: False, 1: False}, 3 * DAY) == set()


def test_a_partition_not_read_yet_holds_back_every_partition_read_so_far() -> None:
    """After a start: its first events may lie far behind the others'."""
    times = {0: None, 1: 25 * DAY, 2: 26 * DAY}
    assert held_back(times, {0: True, 1: True, 2: False}, 3 * DAY) == {1, 2}
    assert held_back(times, {0: False, 1: True, 2: False}, 3 * DAY) == set()


def test_no_partition_read_yet_holds_nobody_back() -> None:
    assert held_back({0: None, 1: None}, {0: True, 1: True}, 0) == set()
