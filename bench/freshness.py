"""Model freshness: from the last label of the new window arriving to the new champion scoring.

On private Kafka and Redis (free loopback ports, a temporary folder) and an MLflow SQLite
store: simulate the data, train a first champion on all days but the last, materialize, and
start a scoring worker (`skewless serve`, alias poll SKEWLESS_CHAMPION_POLL_S) fed a steady
stream of transactions. Then the last day arrives, labels included: the moment its file is
about to be written is t0. `skewless retrain` runs as a command of its own (start-up, Spark,
incremental backfill, training set, torch, MLflow, gate); freshness is the Kafka timestamp of
the worker's first score by the new version minus t0.

The first champion is trained for one epoch at a negligible learning rate, so the retrained
model passes the gate whatever the day brings; this measures time, not quality. Scheduling
delay (`--every`) comes on top: up to one period.

    uv run --frozen --no-sync python bench/freshness.py              # the demo data's size
    uv run --frozen --no-sync python bench/freshness.py --customers 1000 --days 90

Ends with: `freshness: total_s=<s> retrain_s=<s> swap_s=<s>`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
from kafka import KafkaConsumer, KafkaProducer

from skewless import registry
from skewless.data import write_transactions
from skewless.feature_store import feast_environment
from skewless.services import kafka, redis_server
from skewless.settings import Settings, load_settings
from skewless.simulator import SimulationParams, simulate
from skewless.spark import spark_session
from training.model import TrainingParams
from training.pipeline import TrainOptions, run_training

logger = logging.getLogger("freshness")

STREAM_RATE = 200
"""Transactions per second offered to the worker while the retrain runs."""
DEADLINE_S = 3600.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from skewless_cli.cli import main; main()", *args]


def _stream(settings: Settings, events: pd.DataFrame, stop: threading.Event) -> None:
    """Send `events` (again and again, with new ids) at STREAM_RATE until `stop`."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    bodies = [
        {
            "transaction_id": int(tx_id),
            "tx_datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "customer_id": int(customer),
            "terminal_id": int(terminal),
            "tx_amount": float(amount),
        }
        for tx_id, when, customer, terminal, amount in zip(
            events["transaction_id"].tolist(),
            events["tx_datetime"].tolist(),
            events["customer_id"].tolist(),
            events["terminal_id"].tolist(),
            events["tx_amount"].tolist(),
            strict=True,
        )
    ]
    id_step = max(body["transaction_id"] for body in bodies) + 1
    sent = 0
    started = time.monotonic()
    try:
        while not stop.is_set():
            body = dict(bodies[sent % len(bodies)])
            body["transaction_id"] += id_step * (sent // len(bodies) + 1)
            producer.send(settings.topic_transactions, json.dumps(body).encode())
            sent += 1
            ahead = sent / STREAM_RATE - (time.monotonic() - started)
            if ahead > 0:
                stop.wait(ahead)
    finally:
        producer.close()


def _first_score_by(settings: Settings, version: str, deadline_s: float) -> float:
    """Kafka timestamp (s) of the first score by `version`, reading from the beginning."""
    consumer = KafkaConsumer(
        settings.topic_scores,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    deadline = time.monotonic() + deadline_s
    first: float | None = None
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if json.loads(record.value)["model_version"] == version:
                        stamp = record.timestamp / 1000
                        first = stamp if first is None else min(first, stamp)
            if first is not None:
                return first
    finally:
        consumer.close()
    raise TimeoutError(f"no score by version {version} within {deadline_s:.0f} s")


def measure(args: argparse.Namespace, root: Path) -> dict[str, float]:
    settings = load_settings(
        runtime_dir=root / "runtime",
        data_dir=root / "data",
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        redis_port=_free_port(),
        mlflow_port=_free_port(),
        metrics_port=0,
        champion_poll_s=args.poll_s,
    )
    env = os.environ | feast_environment(settings)
    redis_server.start(settings)
    kafka.start(settings)
    params = SimulationParams(
        n_customers=args.customers,
        n_terminals=args.terminals,
        n_days=args.days,
        start_date=date(2026, 4, 1),
    )
    transactions = simulate(params).transactions
    last_day = transactions["tx_datetime"].max().normalize()
    before = transactions[transactions["tx_datetime"] < last_day]
    data = settings.data_dir / "raw" / "transactions.parquet"
    write_transactions(before, data)
    logger.info("%d transactions, the last day (%d) arrives later", len(transactions),
                len(transactions) - len(before))  # fmt: skip
    weak = replace(TrainingParams(), max_epochs=1, learning_rate=1e-9)
    first = run_training(settings, TrainOptions(data=data, params=weak))
    spark_session(settings).stop()  # the retrain command runs Spark of its own
    logger.info("first champion: version %s", first.version)

    worker = subprocess.Popen(_command("serve"), env=env, start_new_session=True)
    stop = threading.Event()
    live = transactions[transactions["tx_datetime"] >= last_day]
    stream = threading.Thread(target=_stream, args=(settings, live, stop), daemon=True)
    stream.start()
    try:
        _first_score_by(settings, first.version, 300)
        logger.info("the worker scores with version %s; the last day arrives", first.version)
        t0 = time.time()
        write_transactions(transactions, data)
        retrain = [*_command("retrain", "--data", str(data)), "--epochs", str(args.epochs)]
        subprocess.run(retrain, env=env, check=True)
        retrained = time.time()
        client = registry.client(settings)
        new = registry.champion_version(client, settings.model_name)
        if new is None or new == first.version:
            raise RuntimeError(f"the retrain did not promote a new champion (champion {new})")
        scored = _first_score_by(settings, new, DEADLINE_S)
    finally:
        stop.set()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        kafka.stop(settings)
        redis_server.stop(settings)
    return {"total_s": scored - t0, "retrain_s": retrained - t0, "swap_s": scored - retrained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=SimulationParams.n_customers)
    parser.add_argument("--terminals", type=int, default=SimulationParams.n_terminals)
    parser.add_argument("--days", type=int, default=SimulationParams.n_days)
    parser.add_argument("--epochs", type=int, default=100, help="retrain's maximum epochs")
    parser.add_argument("--poll-s", type=float, default=10.0, help="the worker's alias poll")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("kafka", "py4j", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="skewless-freshness-"))
    try:
        figures = measure(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    size = f"{args.customers} customers, {args.terminals} terminals, {args.days} days"
    print(f"data: {size}; worker poll {args.poll_s:g} s")
    print("freshness: " + " ".join(f"{key}={value:.1f}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
