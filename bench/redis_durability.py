"""What durable state costs: the worker's Redis round trips with `appendfsync always` against
`everysec`, in the same run.

The worker commits its Kafka offsets (labels included) only after the state's writes are
acknowledged. With `appendfsync always` Redis answers a write only once its append-only file
is fsynced, so an acknowledged label survives a Redis crash; with `everysec` the last second
of writes can be lost after the offsets that carried them were committed. This benchmark
starts one private Redis per mode (loopback, free ports, removed afterwards), loads the same
simulated transactions in micro-batches through the streaming state (`score_features`: the
additions and the window reads of a batch in one round trip; `add_labels`: the batch's labels)
and prints the time per batch and per event of each mode, and their ratio.

Usage: `uv run --frozen --no-sync python bench/redis_durability.py [--batch 2000]`.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from skewless.feature_store import load_declarations
from skewless.services import redis_server
from skewless.settings import load_settings
from skewless.simulator import SimulationParams, simulate
from skewless.stream_state import StreamState


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(mode: str, transactions: pd.DataFrame, batch: int, root: Path) -> list[float]:
    """Seconds of each batch (state round trip + labels round trip) on a Redis in `mode`."""
    settings = load_settings(
        runtime_dir=root / mode, redis_port=_free_port(), redis_appendfsync=mode
    )
    redis_server.start(settings)
    try:
        client = redis_server.client(settings)
        state = StreamState(client, load_declarations(settings), "bench:durability")
        seconds = []
        for start in range(0, len(transactions), batch):
            rows = transactions.iloc[start : start + batch]
            started = time.perf_counter()
            state.score_features(rows.drop(columns=["tx_fraud"]))
            state.add_labels(
                rows[["transaction_id", "customer_id", "terminal_id", "tx_datetime", "tx_fraud"]]
            )
            seconds.append(time.perf_counter() - started)
        return seconds
    finally:
        redis_server.stop(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000, help="events per micro-batch")
    parser.add_argument("--days", type=int, default=20, help="simulated days to load")
    args = parser.parse_args()
    params = SimulationParams(n_days=args.days, start_date=date(2026, 4, 1))
    transactions = simulate(params).transactions.sort_values("tx_datetime", kind="stable")
    transactions = transactions[
        ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]
    ]
    print(f"{len(transactions):,} events in batches of {args.batch}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="skewless-durability-") as tmp:
        for mode in ("everysec", "always"):
            seconds = np.array(_run(mode, transactions, args.batch, Path(tmp)))
            results[mode] = seconds
            print(
                f"appendfsync {mode:8}: {seconds.mean() * 1e3:6.2f} ms per batch "
                f"(p99 {np.percentile(seconds, 99) * 1e3:6.2f} ms), "
                f"{seconds.sum() / len(transactions) * 1e6:5.1f} us per event"
            )
    ratio = results["always"].mean() / results["everysec"].mean()
    print(f"durability: always_vs_everysec={ratio:.2f}x")


if __name__ == "__main__":
    main()
