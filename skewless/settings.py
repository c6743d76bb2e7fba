"""One frozen settings object per process, read from `SKEWLESS_*` environment variables.

Every address, port, path, topic name and threshold of the platform lives here. Entry points
build it once with `load_settings()` and pass it down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SKEWLESS_"
FEAST_REGISTRY_FILE = Path("feast") / "registry.db"
"""The Feast registry file under the data folder, unless `feast_registry` names another."""
SECRET_MASK = "**********"
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^/@\s]+@")
"""The password of a `scheme://user:password@host` URL."""

FEATURE_STORE_YAML = Path("feature_repo") / "feature_store.yaml"
"""A folder holding this file is a skewless project's root."""


def project_root(start: Path | None = None) -> Path:
    """The nearest folder from `start` (default: the working directory) upwards that holds
    `feature_repo/feature_store.yaml`; `start` itself when there is none.

    Relative folder settings resolve against it, so a command run from a subfolder, e.g.
    Feast's own CLI, which works from inside `feature_repo/`, finds the same data, registry
    and runtime folder as one run from the root.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / FEATURE_STORE_YAML).is_file():
            return folder
    return here


class SettingsError(ValueError):
    """A setting could not be parsed; the message names the variable and what it expects."""


class Settings(BaseSettings):
    """The effective configuration of one skewless process."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # Folders.
    runtime_dir: Path = Field(Path(".runtime"), description="pids, logs and server data")
    data_dir: Path = Field(Path("data"), description="raw and derived data sets")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "skewless", description="downloads kept between runs (Kafka jars)"
    )
    feature_repo: Path = Field(Path("feature_repo"), description="the Feast feature repository")

    # Kafka (KRaft, one combined broker + controller node).
    kafka_version: str = Field("4.3.1", description="org.apache.kafka:kafka_2.13 version")
    kafka_host: str = Field("127.0.0.1", description="address Kafka binds and clients use")
    kafka_port: int = Field(9092, ge=1, le=65535, description="Kafka client listener port")
    kafka_controller_port: int = Field(9093, ge=1, le=65535, description="KRaft controller port")
    kafka_heap_mb: int = Field(512, ge=128, description="Kafka JVM heap size in MiB")
    kafka_partitions: int = Field(2, ge=1, description="partitions of every topic created")
    topic_transactions: str = Field("transactions", description="raw transaction events")
    topic_labels: str = Field("fraud-labels", description="delayed fraud labels")
    topic_scores: str = Field("fraud-scores", description="scores produced by the worker")
    topic_dead_letter: str = Field("transactions-dlq", description="malformed events, with reason")
    topic_feature_log: str = Field("feature-log", description="feature vectors the worker served")

    # Redis, the Feast online store.
    redis_host: str = Field("127.0.0.1", description="Redis address")
    redis_port: int = Field(6379, ge=1, le=65535, description="Redis port")
    redis_password: SecretStr | None = Field(None, description="Redis password, if any")
    redis_cluster: bool = Field(
        False,
        description="true: redis_host:redis_port is one node of a Redis Cluster; clients find "
        "the others, group batched commands per node, and `services up` starts a local "
        "three-node cluster on redis_port, redis_port + 1 and redis_port + 2",
    )
    redis_appendfsync: Literal["always", "everysec"] = Field(
        "always",
        description="when the Redis we start fsyncs its append-only file: `always` before it "
        "answers a write (state is durable before offsets are committed), `everysec` "
        "(faster; a Redis crash can lose the last second of state)",
    )

    # MLflow tracking server and registry.
    mlflow_host: str = Field("127.0.0.1", description="address the MLflow server binds")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow server port")
    mlflow_tracking_uri: str | None = Field(
        None, description="tracking URI; default: the SQLite store under runtime_dir"
    )
    model_name: str = Field("fraud-detector", description="registered model name")
    feast_registry: str | None = Field(
        None,
        description="Feast registry: a file path, or a SQLAlchemy URL for a SQL registry; "
        "default: data_dir/feast/registry.db",
    )
    feature_service: str = Field("fraud_model_v1", description="Feast feature service of the model")

    # Scoring worker.
    consumer_group: str = Field("skewless-scorer", description="Kafka consumer group of workers")
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: scores acknowledged, then offsets committed (a crash may "
        "score a transaction twice); exactly_once: each micro-batch is a Kafka transaction "
        "with its consumed offsets (read fraud-scores with isolation_level=read_committed)",
    )
    worker_id: str | None = Field(
        None,
        min_length=1,
        description="this worker's name in its group, stable across restarts and unique in "
        "the group; exactly_once uses <consumer_group>-<worker_id> as the transactional id; "
        "default: the host name",
    )
    score_threshold: float = Field(0.5, ge=0, le=1, description="score at or above: is_fraud")
    batch_max_events: int = Field(2000, ge=1, description="largest micro-batch")
    batch_max_wait_ms: int = Field(10, ge=0, description="longest wait to fill a micro-batch")
    champion_poll_s: float = Field(10.0, ge=0, description="alias poll period (0: never)")
    max_lag_s: float | None = Field(
        None, gt=0, description="events older than this (Kafka time) get the fallback; off if unset"
    )
    feature_log_sample_rate: float = Field(
        1.0, ge=0, le=1, description="share of scored events written to the feature log"
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics port (0: off)")
    http_port: int = Field(8088, ge=1, le=65535, description="HTTP enricher port")
    http_max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest POST /score body (larger: 413)"
    )
    http_read_timeout_s: float = Field(
        10.0, gt=0, description="longest wait for a request body (slower: 408)"
    )
    http_max_concurrency: int = Field(
        1024, ge=1, description="open connections and tasks before the enricher answers 503"
    )
    http_backlog: int = Field(2048, ge=1, description="listen backlog of the HTTP enricher")

    stream_state_prefix: str = Field(
        "skewless:state", description="Redis key prefix of the streaming window state"
    )
    max_tx_amount: float = Field(
        1e9,
        gt=0,
        le=1e12,
        description="largest tx_amount accepted; larger ones go to the dead-letter topic",
    )
    state_allowed_lateness_s: float = Field(
        7 * 86_400.0,
        ge=0,
        le=1e10,
        description="an event older than its partition's stream time by more than this "
        "goes to the dead-letter topic (too_late)",
    )
    allowed_clock_skew_s: float = Field(
        3_600.0,
        ge=0,
        le=1e10,
        description="an event dated later than this after it entered Kafka (or reached the "
        "HTTP door) goes to the dead-letter topic (too_far_ahead)",
    )

    # Prometheus, scraping the worker and the HTTP enricher.
    prometheus_port: int = Field(9190, ge=1, le=65535, description="Prometheus server port")
    prometheus_scrape_interval_s: float = Field(
        5.0, gt=0, le=60, description="how often Prometheus scrapes and evaluates the rules"
    )
    prometheus_rules: Path = Field(
        Path("monitoring") / "prometheus" / "rules.yml",
        description="recording and alerting rules Prometheus loads",
    )

    # Monitoring thresholds.
    skew_tolerance_relative: float = Field(
        1e-9, ge=0, description="online and offline values further apart than this differ"
    )
    skew_max_mismatch_rate: float = Field(
        0.001, ge=0, le=1, description="a feature with more mismatching rows is skewed"
    )
    skew_max_js: float = Field(0.05, ge=0, le=1, description="largest JS distance online/offline")
    drift_psi_warn: float = Field(0.1, ge=0, description="PSI from which a feature warns")
    drift_psi_alert: float = Field(0.25, ge=0, description="PSI from which a feature alerts")
    drift_js_alert: float = Field(0.1, ge=0, le=1, description="JS distance that alerts")
    drift_ks_alert: float = Field(0.2, ge=0, le=1, description="KS statistic that alerts")

    # Start-up.
    service_start_timeout_s: float = Field(
        180.0, gt=0, description="deadline for a server to answer"
    )

    @field_validator("runtime_dir", "data_dir", "cache_dir", "feature_repo", "prometheus_rules")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        """Paths are made absolute once, against the project root, so a later change of
        directory cannot move them."""
        return (project_root() / path.expanduser()).resolve()

    @cached_property
    def kafka_bootstrap(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{self.kafka_host}:{self.kafka_port}"

    @cached_property
    def mlflow_store_dir(self) -> Path:
        """Folder holding the MLflow SQLite database and artifacts."""
        return self.runtime_dir / "mlflow"

    @cached_property
    def mlflow_backend_uri(self) -> str:
        """SQLite backend store shared by the server and by direct clients."""
        return f"sqlite:///{self.mlflow_store_dir / 'mlflow.db'}"

    @cached_property
    def mlflow_artifact_root(self) -> Path:
        """Local artifact root of the MLflow store."""
        return self.mlflow_store_dir / "artifacts"

    @cached_property
    def tracking_uri(self) -> str:
        """The tracking URI clients use."""
        return self.mlflow_tracking_uri or self.mlflow_backend_uri

    @cached_property
    def feast_registry_location(self) -> str:
        """The Feast registry in effect: the setting, or the file under the data folder."""
        return self.feast_registry or str(self.data_dir / FEAST_REGISTRY_FILE)

    @cached_property
    def topics(self) -> tuple[str, ...]:
        """Every topic the platform uses."""
        return (
            self.topic_transactions,
            self.topic_labels,
            self.topic_scores,
            self.topic_dead_letter,
            self.topic_feature_log,
        )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a setting, e.g. SKEWLESS_MLFLOW_PORT for mlflow_port."""
        if field not in cls.model_fields:
            raise KeyError(f"no setting named {field!r}")
        return f"{ENV_PREFIX}{field.upper()}"

    def as_env_lines(self) -> list[str]:
        """`SKEWLESS_NAME=value` for every setting as given, secrets masked; unset ones empty."""
        return [_env_line(name, getattr(self, name)) for name in type(self).model_fields]

    def effective_env_lines(self) -> list[str]:
        """`SKEWLESS_NAME=value` for every setting, with the value in effect where an unset
        setting has a derived default (the tracking URI, the Feast registry); for people to
        read, so secrets and passwords inside URLs are masked."""
        derived = {
            "mlflow_tracking_uri": self.tracking_uri,
            "feast_registry": self.feast_registry_location,
        }
        return [
            mask_url_password(_env_line(name, derived.get(name, getattr(self, name))))
            for name in type(self).model_fields
        ]


def mask_url_password(text: str) -> str:
    """`text` with the password of any `scheme://user:password@host` URL masked."""
    return _URL_PASSWORD.sub(rf"\g<1>{SECRET_MASK}@", text)


def _env_line(name: str, value: object) -> str:
    """One `SKEWLESS_NAME=value` line: a secret masked, None empty."""
    if isinstance(value, SecretStr):
        shown = SECRET_MASK
    elif value is None:
        shown = ""
    else:
        shown = str(value)
    return f"{ENV_PREFIX}{name.upper()}={shown}"


def _describe(error: dict[str, Any]) -> str:
    """One line naming the variable, the expected type and the value given."""
    name = ENV_PREFIX + ".".join(str(part) for part in error["loc"]).upper()
    expected = error["msg"]
    given = error.get("input")
    return f"{name}: {expected} (got {given!r})"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment, raising `SettingsError` with readable lines."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(dict(error)) for error in exc.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
