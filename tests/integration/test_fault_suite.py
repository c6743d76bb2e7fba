"""The fault suite: a worker process that faults of its servers cannot stop, and loses nothing.

One replay of more than 20,000 transactions (and their labels) on servers of this module
alone: Kafka, Redis, and an MLflow server over a copy of the trained platform's registry.
The replay is published in `SEGMENTS` parts, each once the previous fault is over, and each
fault comes while its part is being scored: the broker is killed with SIGKILL and restarted,
Redis is killed with SIGKILL and restarted, the MLflow server is stopped, then the worker
itself is killed with SIGKILL, with transactions still unscored, and a second one started.
Afterwards:
- every transaction has a committed score: exactly one in exactly_once, at least one in
  at_least_once;
- the first worker was the same process throughout, until its own kill;
- the features served (the feature log) equal the Spark backfill's for every transaction;
- the second worker exited 0 after its run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer

from monitoring.feature_log import feature_log_rows
from serving.replay import replay
from skewless.feature_store import feast_environment, offline_table_path
from skewless.services import kafka, mlflow_server, redis_server
from skewless.services.process import ManagedProcess, wait_for
from skewless.settings import Settings, load_settings
from skewless.spark import spark_session
from tests.conftest import TrainedPlatform, free_port, private_servers, private_settings
from training.pipeline import materialize_with_progress

pytestmark = pytest.mark.integration

START = datetime(2026, 5, 4, tzinfo=UTC)
"""The replay runs from here to the end of the platform's data: more than 20,000 transactions."""
RATE = 1500.0
"""Transactions per second of the replay, so that each part lasts a few seconds."""
SEGMENTS = 4
"""Parts of the replay, of about equal numbers of transactions: one per fault."""
WINDOW_FEATURES = 20
"""6 customer and 14 terminal window features."""


@pytest.fixture(scope="module")
def fault_servers(
    trained_platform: TrainedPlatform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Kafka, Redis and MLflow of this module alone (they get killed), on free ports."""
    runtime = tmp_path_factory.mktemp("faults")
    store = trained_platform.settings.mlflow_store_dir
    shutil.copytree(store, runtime / "mlflow", ignore=shutil.ignore_patterns("artifacts"))
    values = trained_platform.settings.model_dump()
    values.update(runtime_dir=runtime, **private_servers())
    settings = load_settings(**values)
    settings = load_settings(**(values | {"mlflow_tracking_uri": mlflow_server.url(settings)}))
    saved = dict(os.environ)  # materializing exports this module's settings to the process
    redis_server.start(settings)
    kafka.start(settings)
    mlflow_server.start(settings)
    try:
        yield settings
    finally:
        mlflow_server.stop(settings)
        kafka.stop(settings)
        redis_server.stop(settings)
        os.environ.clear()  # the session's servers again for the tests that follow
        os.environ.update(saved)


def _kill_9(settings: Settings, name: str) -> None:
    """SIGKILL the process group of one of the module's servers, and wait until it is gone."""
    pid = ManagedProcess(name, settings.runtime_dir).pid()
    assert pid is not None, name
    os.killpg(pid, signal.SIGKILL)
    assert wait_for(lambda: ManagedProcess(name, settings.runtime_dir).pid() is None, 30), name


def _committed(settings: Settings, topic: str) -> list[Any]:
    """Every committed record of `topic`, as a `read_committed` consumer reads it."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
        isolation_level="read_committed",
    )
    try:
        return [json.loads(record.value) for record in consumer]
    finally:
        consumer.close()


def _health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return dict(json.loads(response.read()))
    except OSError:
        return {}


def _scored(port: int) -> int:
    """Events the worker scored and committed so far, as its /metrics tells (0: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("skewless_events_scored_total "):
            return int(float(line.split()[1]))
    return 0


def _wait_scored(port: int, count: int, worker: subprocess.Popen[str]) -> None:
    assert wait_for(lambda: _scored(port) >= count or worker.poll() is not None, 300)
    assert worker.poll() is None, f"the worker stopped (exit {worker.returncode})"


def _segments(transactions: pd.DataFrame) -> list[tuple[datetime, datetime | None]]:
    """`SEGMENTS` consecutive [start, end) ranges of about equal numbers of transactions."""
    times = transactions["tx_datetime"].sort_values().reset_index(drop=True)
    cuts = [times[len(times) * k // SEGMENTS].to_pydatetime() for k in range(1, SEGMENTS)]
    return list(zip([START, *cuts], [*cuts, None], strict=True))


class _Publisher(threading.Thread):
    """Replays each segment once its gate is opened, one after the other."""

    def __init__(self, settings: Settings, data: Path, segments: list[tuple[Any, Any]]) -> None:
        super().__init__(name="fault-suite-replay")
        self.settings, self.data, self.segments = settings, data, segments
        self.gates = [threading.Event() for _ in segments]
        self.failure: BaseException | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """No further segment (the test failed)."""
        self._cancelled = True
        for gate in self.gates:
            gate.set()

    def run(self) -> None:
        try:
            for gate, (start, end) in zip(self.gates, self.segments, strict=True):
                if not gate.wait(600) or self._cancelled:
                    return
                # Labels due after a segment's last transaction are sent with it, so that no
                # label falls between two segments (the next one repeats some: harmless).
                replay(self.settings, self.data, start, end, RATE)
        except BaseException as exc:  # reported by the test
            self.failure = exc


def _serve(settings: Settings, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[str]:
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "skewless", "serve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _assert_features_equal_the_backfill(
    settings: Settings, transactions: pd.DataFrame
) -> dict[str, int]:
    """Assert every served window value equals the backfill's; returns, per window, the rows
    served as unknown (NaN) where the backfill has a value."""
    rows: list[dict[str, Any]] = [
        row
        for body in _committed(settings, settings.topic_feature_log)
        for row in feature_log_rows(json.dumps(body).encode())
    ]
    served = pd.DataFrame([{"transaction_id": r["transaction_id"], **r["features"]} for r in rows])
    served = served.set_index("transaction_id")
    duplicates = served[served.index.duplicated(keep=False)]
    for _, group in duplicates.groupby(level=0):  # a re-scored event was scored the same way
        assert (group.nunique(dropna=False) <= 1).all(), group
    served = served[~served.index.duplicated()]
    assert set(served.index) == set(transactions["transaction_id"])
    customers, terminals = (
        pd.read_parquet(offline_table_path(settings, name)).set_index("transaction_id")
        for name in ("customer_spending", "terminal_risk")
    )
    windows = [c for c in served.columns if c.startswith(("customer_", "terminal_"))]
    assert len(windows) == WINDOW_FEATURES
    offline = customers[[c for c in windows if c.startswith("customer")]].join(
        terminals[[c for c in windows if c.startswith("terminal")]]
    )
    unknown: dict[str, int] = {}
    for name in windows:
        want = offline.loc[served.index, name].to_numpy(dtype=float)
        got = served[name].to_numpy(dtype=float)
        assert not np.isnan(want[~np.isnan(got)]).any(), name  # never a value the backfill lacks
        lost = np.isnan(got) & ~np.isnan(want)
        if lost.any():
            unknown[name] = int(lost.sum())
        kept = ~np.isnan(got)
        if "count" in name:
            np.testing.assert_array_equal(got[kept], want[kept], err_msg=name)
        else:
            np.testing.assert_allclose(got[kept], want[kept], rtol=1e-9, atol=1e-12, err_msg=name)
    return unknown


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_no_fault_of_a_server_stops_the_worker_or_loses_a_score(
    trained_platform: TrainedPlatform,
    fault_servers: Settings,
    delivery: str,
    tmp_path: Path,
) -> None:
    base = private_settings(trained_platform)  # its own topics, group and state prefix
    own: dict[str, Any] = {
        k: v
        for k, v in base.model_dump().items()
        if k.startswith(("topic_", "consumer_group", "stream_state_prefix"))
    }
    settings = load_settings(
        **(fault_servers.model_dump() | own | {"delivery": delivery, "batch_max_events": 200})
    )
    kafka.ensure_topics(settings)
    if mlflow_server.is_ready(settings) is False:
        mlflow_server.start(settings)
    materialize_with_progress(spark_session(settings), settings, trained_platform.data, until=START)
    tx = trained_platform.transactions
    transactions = tx[tx["tx_datetime"] >= START]
    assert len(transactions) >= 20_000

    metrics_port = free_port()
    env = {
        **os.environ,
        **feast_environment(settings),
        "SKEWLESS_CHAMPION_POLL_S": "1",
        "SKEWLESS_METRICS_PORT": str(metrics_port),
    }
    log = tmp_path / "worker.log"
    first = _serve(settings, env, log)
    segments = _segments(transactions)
    sizes = [
        int(((tx["tx_datetime"] >= start) & (end is None or tx["tx_datetime"] < end)).sum())
        for start, end in segments
    ]
    before = np.cumsum([0, *sizes])  # transactions before each segment
    total = len(transactions)
    assert before[-1] == total
    publisher = _Publisher(settings, trained_platform.data, segments)
    publisher.start()
    try:  # each segment is published once the worker is ready for it: no fault comes too late
        assert wait_for(lambda: bool(_health(metrics_port)) or first.poll() is not None, 300)
        publisher.gates[0].set()
        _wait_scored(metrics_port, sizes[0] // 4, first)
        _kill_9(settings, "kafka")
        time.sleep(2)
        kafka.start(settings)

        publisher.gates[1].set()
        _wait_scored(metrics_port, before[1] + sizes[1] // 4, first)
        _kill_9(settings, "redis")
        time.sleep(2)
        redis_server.start(settings)

        publisher.gates[2].set()
        _wait_scored(metrics_port, before[2] + sizes[2] // 4, first)
        mlflow_server.stop(settings)  # the champion poll fails from now on; scoring goes on
        assert wait_for(lambda: "registry" in _health(metrics_port).get("faults", {}), 60)

        publisher.gates[3].set()
        _wait_scored(metrics_port, before[3] + sizes[3] // 8, first)
        assert first.poll() is None, log.read_text()[-3000:]
    except BaseException:
        publisher.cancel()
        raise
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    scored = {body["transaction_id"] for body in _committed(settings, settings.topic_scores)}
    # The kill came mid-stream: the second worker has transactions left to score.
    assert len(scored) < total, "the first worker had scored everything before its kill"
    second = _serve(settings, env, log, "--idle-exit-seconds", "10")
    mlflow_server.start(settings)  # while the new worker starts: it waits for it to load its model
    exit_code = second.wait(timeout=600)
    publisher.join(timeout=600)
    assert publisher.failure is None, publisher.failure
    summaries = [
        line for line in log.read_text().splitlines() if line.startswith("serve: consumed")
    ]
    assert summaries, log.read_text()[-3000:]  # the second worker ran to its idle exit

    ids = Counter(body["transaction_id"] for body in _committed(settings, settings.topic_scores))
    print(f"fault suite {delivery}: {total:,} transactions, {sum(ids.values()):,} committed "
          f"scores, {sum(ids.values()) - len(ids):,} duplicates, {len(scored):,} scored at the "
          "worker kill")  # fmt: skip
    assert set(ids) == set(transactions["transaction_id"])
    if delivery == "exactly_once":
        assert set(ids.values()) == {1}, ids.most_common(3)
    unknown = _assert_features_equal_the_backfill(settings, transactions)
    assert not unknown, f"windows served as unknown where the backfill has a value: {unknown}"
    assert exit_code == 0, f"the second worker exited with {exit_code} after {summaries[-1]!r}"
