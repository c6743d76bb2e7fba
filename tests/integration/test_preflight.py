"""Start-up checks: a bad configuration stops `serve` at once, naming the setting to change."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from serving.preflight import ConfigurationError, check_serving
from skewless.services import redis_server
from skewless.settings import Settings, load_settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _with(settings: Settings, **changes: object) -> Settings:
    return load_settings(**(settings.model_dump() | {"service_start_timeout_s": 2.0} | changes))


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A Redis of its own that wants a password."""
    settings = load_settings(
        runtime_dir=tmp_path_factory.mktemp("locked"),
        redis_port=free_port(),
        redis_password="s3cret",
    )
    redis_server.start(settings)
    yield settings
    redis_server.stop(settings)


def test_each_bad_setting_is_named(
    redis_service: Settings, kafka_service: Settings, locked_redis: Settings
) -> None:
    good = _with(kafka_service, metrics_port=free_port())
    check_serving(good, kafka_worker=True)  # the good configuration passes
    cases = {
        "SKEWLESS_REDIS_PASSWORD": _with(
            good, redis_port=locked_redis.redis_port, redis_password="wrong"
        ),
        "set SKEWLESS_REDIS_PASSWORD": _with(good, redis_port=locked_redis.redis_port),
        "SKEWLESS_REDIS_HOST/SKEWLESS_REDIS_PORT": _with(good, redis_port=free_port()),
        "SKEWLESS_KAFKA_HOST/SKEWLESS_KAFKA_PORT": _with(good, kafka_port=free_port()),
        "SKEWLESS_TOPIC_TRANSACTIONS": _with(good, topic_transactions=f"none-{uuid.uuid4().hex}"),
    }
    for setting, settings in cases.items():
        with pytest.raises(ConfigurationError, match=setting):
            check_serving(settings, kafka_worker=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match="SKEWLESS_METRICS_PORT"):
            check_serving(_with(good, metrics_port=port), kafka_worker=True)
        with pytest.raises(ConfigurationError, match="SKEWLESS_HTTP_PORT"):
            check_serving(_with(good, http_port=port), kafka_worker=False)


def test_serve_with_a_wrong_password_exits_2_before_it_says_it_is_up(
    kafka_service: Settings, locked_redis: Settings
) -> None:
    env = {
        **os.environ,
        "SKEWLESS_REDIS_PORT": str(locked_redis.redis_port),
        "SKEWLESS_REDIS_PASSWORD": "wrong",
        "SKEWLESS_METRICS_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "skewless", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "serve:" not in done.stdout
    assert "refused the password" in done.stderr
    assert "SKEWLESS_REDIS_PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_cluster_passes_and_a_mismatched_redis_cluster_setting_is_named(
    redis_service: Settings, redis_cluster_service: Settings
) -> None:
    cluster = _with(redis_cluster_service, metrics_port=free_port())
    check_serving(cluster, kafka_worker=False)
    for wrong in (
        _with(cluster, redis_port=redis_service.redis_port),  # a single Redis as a cluster
        _with(cluster, redis_cluster=False),  # a cluster node as a single Redis
    ):
        with pytest.raises(ConfigurationError, match="SKEWLESS_REDIS_CLUSTER"):
            check_serving(wrong, kafka_worker=False)
