"""Apache Kafka in KRaft mode: one combined broker + controller node, assembled from Maven Central.

The jars are resolved once by Maven from `assets/kafka-pom.xml` into the cache folder (outside
tracked files); the storage is formatted with `kafka.tools.StorageTool`; the server runs as
`java -cp 'lib/*' kafka.Kafka server.properties` in its own process group.
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from skewless.services.java import check_java
from skewless.services.process import (
    Endpoint,
    ManagedProcess,
    ServiceError,
    answers,
    port_open,
    wait_ready,
)
from skewless.settings import Settings

logger = logging.getLogger(__name__)

NAME = "kafka"
_READY_MARKER = ".resolved"


def _asset(name: str) -> Path:
    return Path(str(resources.files("skewless.services") / "assets" / name))


def lib_dir(settings: Settings) -> Path:
    """Where the jars of the configured Kafka version live."""
    return settings.cache_dir / f"kafka-{settings.kafka_version}" / "lib"


def ensure_installed(settings: Settings) -> Path:
    """Resolve the Kafka jars with Maven once; later calls return the cached folder."""
    target = lib_dir(settings)
    if (target / _READY_MARKER).exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn was not found on PATH; Kafka is assembled with Maven (apt: maven)")
    staging = target.with_name("lib.partial")
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("resolving Kafka %s from Maven Central into %s", settings.kafka_version, target)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(_asset("kafka-pom.xml")),
            f"-Dkafka.version={settings.kafka_version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{settings.kafka_version}:\n"
            + (result.stdout + result.stderr)[-2000:]
        )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (target / _READY_MARKER).write_text(settings.kafka_version + "\n")
    return target


def server_properties(settings: Settings, log_dir: Path) -> str:
    """The server.properties of a single combined node fit for one machine."""
    host = settings.kafka_host
    entries = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{host}:{settings.kafka_controller_port}",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},"
        f"CONTROLLER://{host}:{settings.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": str(settings.kafka_partitions),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # A transaction open past its timeout is aborted within a second, not ten.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),  # must exceed 1 MiB
        "log.retention.hours": "168",
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in entries.items())


def _random_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding.

    One starting with '-' would be read as an option by StorageTool, so draw again.
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


BROKER_GC = ("-XX:+UseSerialGC",)
"""The broker's heap is fixed (`-Xms` = `-Xmx`): a growing heap went through full collections
of ~75 ms under load, and every record's end-to-end latency pays for a broker pause. The serial
collector keeps the second core for the worker (G1's concurrent threads slowed it down more
than its shorter pauses helped, measured with the benchmark on two cores)."""
TOOL_GC = ("-Xms64m", "-XX:+UseSerialGC")


def _java_argv(
    settings: Settings, lib: Path, main_class: str, *args: str, broker: bool = False
) -> list[str]:
    heap = f"-Xmx{settings.kafka_heap_mb}m"
    memory = (f"-Xms{settings.kafka_heap_mb}m", heap, *BROKER_GC) if broker else (*TOOL_GC, heap)
    return [
        check_java(),
        *memory,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={_asset('kafka-log4j2.yaml')}",
        f"-Dkafka.logs.dir={settings.runtime_dir / 'logs'}",
        "-cp",
        f"{lib}/*",
        main_class,
        *args,
    ]


def _format_storage(settings: Settings, lib: Path, config: Path, log_dir: Path) -> None:
    """Format the KRaft storage once; a formatted folder is left as it is."""
    if (log_dir / "meta.properties").exists():
        return
    argv = _java_argv(
        settings, lib, "kafka.tools.StorageTool",
        "format", "-t", _random_cluster_id(), "-c", str(config), "--standalone",
    )  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(f"Kafka storage format failed:\n{result.stdout}{result.stderr}")


def admin(settings: Settings) -> KafkaAdminClient:
    """An admin client for the configured broker."""
    return KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="skewless-admin",
        request_timeout_ms=5000,
    )


PROBE_TIMEOUT_S = 2.0
"""One probe's bounds (bootstrap, then the metadata request); the caller polls again."""


def endpoint(settings: Settings) -> Endpoint:
    """The broker as error messages name it."""
    return Endpoint(NAME, settings.kafka_bootstrap, Settings.env_name("kafka_port"))


def _has_live_broker(settings: Settings) -> bool:
    """True if a metadata request names a live broker; raises on anything that is not an answer."""
    if not port_open(settings.kafka_host, settings.kafka_port):
        return False
    timeout_ms = int(PROBE_TIMEOUT_S * 1000)
    client = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="skewless-probe",
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )
    try:
        return bool(client.describe_cluster().get("brokers"))
    finally:
        client.close()


def is_ready(settings: Settings) -> bool:
    """True if the broker answers a metadata request with a live broker; any failure: False."""
    return answers(lambda: _has_live_broker(settings), NAME)


def ensure_topics(settings: Settings) -> list[str]:
    """Create every platform topic that does not exist yet; returns those created."""
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        missing = [name for name in settings.topics if name not in existing]
        created = []
        for name in missing:
            try:
                client.create_topics(
                    [NewTopic(name, num_partitions=settings.kafka_partitions, replication_factor=1)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                continue
        return created
    finally:
        client.close()


def start(settings: Settings) -> ManagedProcess:
    """Resolve, format and start Kafka unless it already answers; create the topics."""
    process = ManagedProcess(NAME, settings.runtime_dir)
    if process.pid() is None:
        if is_ready(settings):
            raise ServiceError(
                f"another Kafka already answers on {settings.kafka_bootstrap}; "
                "stop it or set SKEWLESS_KAFKA_PORT"
            )
        lib = ensure_installed(settings)
        home = settings.runtime_dir / "kafka"
        log_dir = home / "data"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "server.properties"
        config.write_text(server_properties(settings, log_dir))
        _format_storage(settings, lib, config, log_dir)
        process.start(_java_argv(settings, lib, "kafka.Kafka", str(config), broker=True))
    wait_ready(
        process,
        lambda: _has_live_broker(settings),
        settings.service_start_timeout_s,
        endpoint(settings),
    )
    created = ensure_topics(settings)
    if created:
        logger.info("created topics %s", ", ".join(created))
    return process


def stop(settings: Settings) -> bool:
    """Stop the broker (a clean controlled shutdown first); True if it was running."""
    return ManagedProcess(NAME, settings.runtime_dir).stop(timeout_s=60.0)
