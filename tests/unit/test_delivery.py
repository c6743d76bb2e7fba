"""The exactly-once transactional id (stable per worker, unique per group), and the bound on
kafka-python's calls that have no timeout of their own."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from serving.delivery import DeliveryError, _bounded, transactional_id
from skewless.settings import load_settings


def test_transactional_id_is_the_group_and_the_worker_id() -> None:
    settings = load_settings(consumer_group="scorers", worker_id="worker-3")
    assert transactional_id(settings) == "scorers-worker-3"


def test_transactional_id_defaults_to_the_host_name() -> None:
    settings = load_settings(consumer_group="scorers")
    assert transactional_id(settings) == f"scorers-{socket.gethostname()}"
    assert transactional_id(settings) == transactional_id(load_settings(consumer_group="scorers"))


def test_a_bounded_call_returns_or_raises_its_own_error() -> None:
    done: list[int] = []
    _bounded(lambda: done.append(1), 5.0, "a call")
    assert done == [1]

    def fails() -> None:
        raise KeyError("its own")

    with pytest.raises(KeyError, match="its own"):
        _bounded(fails, 5.0, "a call")


def test_a_bounded_call_that_never_returns_is_left_on_a_daemon_thread() -> None:
    never = threading.Event()
    before = set(threading.enumerate())  # (other tests may have left theirs waiting)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError, match="the abort: no answer from Kafka in 0 s"):
            _bounded(never.wait, 0.2, "the abort")
        assert time.monotonic() - started < 2
        [left] = set(threading.enumerate()) - before
        assert left.name == "skewless-kafka-call"
        assert left.daemon
    finally:
        never.set()
