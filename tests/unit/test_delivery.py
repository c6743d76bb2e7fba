"""The exactly-once transactional id: stable per worker, unique per group."""

from __future__ import annotations

import socket

from serving.delivery import transactional_id
from skewless.settings import load_settings


def test_transactional_id_is_the_group_and_the_worker_id() -> None:
    settings = load_settings(consumer_group="scorers", worker_id="worker-3")
    assert transactional_id(settings) == "scorers-worker-3"


def test_transactional_id_defaults_to_the_host_name() -> None:
    settings = load_settings(consumer_group="scorers")
    assert transactional_id(settings) == f"scorers-{socket.gethostname()}"
    assert transactional_id(settings) == transactional_id(load_settings(consumer_group="scorers"))
