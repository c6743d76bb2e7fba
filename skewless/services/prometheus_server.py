"""Prometheus: Debian's `prometheus` package, our own configuration, loopback only.

The configuration is generated from the settings into the runtime folder at every start: it
scrapes the scoring worker's `/metrics` (`metrics_port`) and the HTTP enricher's
(`http_port`), and loads the repository's recording and alerting rules (`prometheus_rules`).
The time series live under `<runtime>/prometheus/data`.

The Debian package also ships an init script and a systemd unit for a system-wide Prometheus on
port 9090 with `/etc/prometheus/prometheus.yml`. We use neither: our server runs with its own
configuration, data folder and port (`prometheus_port`, 9190 by default), so it neither
depends on nor collides with the package's service where an init system starts it.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from skewless.services.apt import ensure_package
from skewless.services.process import (
    Endpoint,
    ManagedProcess,
    ServiceError,
    already_running,
    answers,
    wait_ready,
)
from skewless.settings import Settings

logger = logging.getLogger(__name__)

NAME = "prometheus"
DEBIAN_PACKAGE = "prometheus"
HOST = "127.0.0.1"
WORKER_JOB = "skewless-worker"
"""Scrape job of the Kafka scoring worker; the rules select it by this name."""
HTTP_JOB = "skewless-http"
"""Scrape job of the HTTP enricher."""
PROBE_TIMEOUT_S = 2.0


def ensure_installed() -> str:
    """Path of `prometheus`, from Debian's package."""
    return ensure_package("prometheus", DEBIAN_PACKAGE)


def promtool() -> str:
    """Path of `promtool` (rule checks and rule unit tests), from the same package."""
    return ensure_package("promtool", DEBIAN_PACKAGE)


def url(settings: Settings) -> str:
    """Base URL of the server (its UI, `/alerts`, and the HTTP API)."""
    return f"http://{HOST}:{settings.prometheus_port}"


def endpoint(settings: Settings) -> Endpoint:
    """The server as error messages name it."""
    return Endpoint(NAME, url(settings), Settings.env_name("prometheus_port"))


def config(settings: Settings) -> dict[str, Any]:
    """The Prometheus configuration for these settings (written as YAML at start)."""
    interval = f"{settings.prometheus_scrape_interval_s:g}s"
    jobs = [(WORKER_JOB, settings.metrics_port), (HTTP_JOB, settings.http_port)]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(settings.prometheus_rules)],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"{HOST}:{port}"]}],
            }
            for job, port in jobs
            if port  # metrics_port 0: the worker exposes no metrics
        ],
    }


def write_config(settings: Settings) -> Path:
    """Write `config(settings)` to `<runtime>/prometheus/prometheus.yml` and return its path."""
    rules = settings.prometheus_rules
    if not rules.is_file():
        raise ServiceError(
            f"no Prometheus rules at {rules}; set {Settings.env_name('prometheus_rules')}"
        )
    path = settings.runtime_dir / NAME / "prometheus.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config(settings), sort_keys=False))
    return path


def _ready(settings: Settings) -> bool:
    """True if `/-/ready` answers 200 OK; raises on anything that is not an answer."""
    with urllib.request.urlopen(f"{url(settings)}/-/ready", timeout=PROBE_TIMEOUT_S) as response:
        return bool(response.status == 200)


def is_ready(settings: Settings) -> bool:
    """True if the server says it is ready to serve queries; any failure means not ready."""
    return answers(lambda: _ready(settings), NAME)


def query(settings: Settings, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query through the HTTP API."""
    request = urllib.request.Request(
        f"{url(settings)}/api/v1/query",
        data=urllib.parse.urlencode({"query": promql}).encode(),
    )
    with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S * 5) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise ServiceError(f"Prometheus rejected {promql!r}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def start(settings: Settings) -> ManagedProcess:
    """Start Prometheus unless ours already answers; idempotent."""
    process = ManagedProcess(NAME, settings.runtime_dir)
    if already_running(process, lambda: is_ready(settings), endpoint(settings)):
        return process
    binary = ensure_installed()
    config_file = write_config(settings)
    data_dir = settings.runtime_dir / NAME / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={HOST}:{settings.prometheus_port}",
        "--storage.tsdb.retention.time=15d",
    ]
    process.start(argv)
    wait_ready(
        process, lambda: _ready(settings), settings.service_start_timeout_s, endpoint(settings)
    )
    return process


def stop(settings: Settings) -> bool:
    """Stop our Prometheus; True if it was running."""
    return ManagedProcess(NAME, settings.runtime_dir).stop()
