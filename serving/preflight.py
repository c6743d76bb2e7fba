"""Start-up checks of a scoring process: a bad configuration stops it here, naming the setting.

`serve` and `serve-http` call `check_serving` before they build anything, so a wrong address,
port or password is reported in one line before the process says it is up, instead of as a
traceback on its first batch:
- Redis must answer PING with the configured password: a refused password is a configuration
  error at once (`SKEWLESS_REDIS_PASSWORD`); no answer is waited for with backoff up to
  `SKEWLESS_SERVICE_START_TIMEOUT_S` (Redis may be restarting), then names
  `SKEWLESS_REDIS_HOST`/`SKEWLESS_REDIS_PORT`. With `SKEWLESS_REDIS_CLUSTER`, every node must
  answer and every slot be served (a cluster still forming is waited for); a single Redis
  given as a cluster, or a cluster node given as a single Redis, names `SKEWLESS_REDIS_CLUSTER`.
- Kafka (the worker only) must answer a metadata request within the same deadline, else
  `SKEWLESS_KAFKA_HOST`/`SKEWLESS_KAFKA_PORT`; the topics the worker reads and writes must
  exist, else the `SKEWLESS_TOPIC_*` setting of each missing one.
- The ports the process will listen on must be free (`SKEWLESS_METRICS_PORT`,
  `SKEWLESS_HTTP_PORT`).
Once running, the same servers going away are faults, waited out by the worker, not errors.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from skewless.services import kafka, redis_server
from skewless.settings import Settings

logger = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """The process cannot run with these settings; the message names the setting to change."""


def _env(*fields: str) -> str:
    return "/".join(Settings.env_name(field) for field in fields)


def _within(deadline_s: float, attempt: Callable[[], str | None], what: str) -> str | None:
    """Call `attempt` (None: done; else why not) with backoff until `deadline_s`; the last
    reason if it never succeeded."""
    started = time.monotonic()
    delay = 0.2
    while True:
        reason = attempt()
        if reason is None:
            return None
        if time.monotonic() - started + delay > deadline_s:
            return reason
        logger.warning("%s not reachable yet (%s); retrying in %.1f s", what, reason, delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def check_redis(settings: Settings) -> None:
    address = f"{settings.redis_host}:{settings.redis_port}"

    def refused(exc: BaseException) -> ConfigurationError:
        if settings.redis_password is None:
            return ConfigurationError(
                f"Redis at {address} wants a password ({exc}): set {_env('redis_password')}"
            )
        return ConfigurationError(
            f"Redis at {address} refused the password ({exc}): check {_env('redis_password')}"
        )

    def ping() -> str | None:
        try:
            client = redis_server.client(settings)  # a cluster client connects here
        except redis.exceptions.RedisClusterException as exc:
            cause = exc.__cause__
            if isinstance(cause, redis.exceptions.AuthenticationError):
                raise refused(cause) from None
            if "not enabled" in str(cause):
                raise ConfigurationError(
                    f"Redis at {address} is not a node of a Redis Cluster ({cause}): unset "
                    f"{_env('redis_cluster')} or point {_env('redis_host', 'redis_port')} at "
                    "a node of the cluster"
                ) from None
            return f"{type(exc).__name__}: {exc}"  # unreachable, or slots not all served yet
        try:
            client.ping()
            cluster_info = cast(dict[str, Any], client.info("cluster"))
            if not settings.redis_cluster and cluster_info.get("cluster_enabled"):
                raise ConfigurationError(
                    f"Redis at {address} is a node of a Redis Cluster: set "
                    f"{_env('redis_cluster')}=true"
                )
            return None
        except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError) as exc:
            raise refused(exc) from None
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            client.close()

    what = f"Redis {'Cluster ' if settings.redis_cluster else ''}at {address}"
    reason = _within(settings.service_start_timeout_s, ping, what)
    if reason is not None:
        raise ConfigurationError(
            f"no {what} answers after {settings.service_start_timeout_s:g} s "
            f"({reason}): check {_env('redis_host', 'redis_port')} or start it "
            "(`make services-up`)"
        )


def check_kafka(settings: Settings) -> None:
    def answers() -> str | None:
        return None if kafka.is_ready(settings) else "no broker answered a metadata request"

    reason = _within(
        settings.service_start_timeout_s, answers, f"Kafka at {settings.kafka_bootstrap}"
    )
    if reason is not None:
        raise ConfigurationError(
            f"no Kafka broker answers at {settings.kafka_bootstrap} after "
            f"{settings.service_start_timeout_s:g} s: check "
            f"{_env('kafka_host', 'kafka_port')} or start it (`make services-up`)"
        )
    client = kafka.admin(settings)
    try:
        existing = set(client.list_topics())
    finally:
        client.close()
    fields = ("topic_transactions", "topic_labels", "topic_scores", "topic_dead_letter",
              "topic_feature_log")  # fmt: skip
    missing = [f for f in fields if getattr(settings, f) not in existing]
    if missing:
        names = ", ".join(f"{getattr(settings, f)} ({Settings.env_name(f)})" for f in missing)
        raise ConfigurationError(
            f"Kafka at {settings.kafka_bootstrap} has no topic {names}: create it "
            "(`skewless services up` creates the configured topics) or fix the setting"
        )


def check_port_free(port: int, field: str) -> None:
    """The process will listen on 127.0.0.1:`port` (0: none)."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server will bind it: a port whose last listener died (its connections in
        # TIME_WAIT) is free; one another process listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError as exc:
            raise ConfigurationError(
                f"port {port} is taken ({exc.strerror}): set {Settings.env_name(field)} "
                "to a free port"
            ) from None


def check_serving(settings: Settings, *, kafka_worker: bool) -> None:
    """Every start-up check of `serve` (`kafka_worker`) or `serve-http`."""
    if kafka_worker:
        check_port_free(settings.metrics_port, "metrics_port")
    else:
        check_port_free(settings.http_port, "http_port")
    check_redis(settings)
    if kafka_worker:
        check_kafka(settings)
