"""`skewless demo`: the whole loop once, on the embedded defaults.

Train on the demo data (Spark backfill, Feast point-in-time join, torch, MLflow, gate), set the
online state as of the start of the last week, replay that week through Kafka, score it with
the worker, then check skew, drift, data quality and live quality of what was served. Each
step is the same code as its own command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from skewless.data import read_transactions, resolve_data
from skewless.settings import Settings

logger = logging.getLogger(__name__)

REPLAY_DAYS = 7


@dataclass(frozen=True)
class DemoResult:
    """Figures of one demo run."""

    model_version: str
    alias: str
    metrics: dict[str, float]
    replayed: int
    scored: int
    dead_letters: int
    events_per_s: float
    verdict: str
    report: str


def run_demo(settings: Settings) -> DemoResult:
    """Train, materialize as of the last week's start, replay the week, serve it."""
    from monitoring.feature_log import compact, sink
    from monitoring.monitor import Window, run_monitor
    from serving.replay import replay
    from serving.worker import build_worker
    from skewless.spark import spark_session
    from training.pipeline import TrainOptions, materialize_with_progress, run_training

    data = resolve_data(settings, None)
    summary = run_training(settings, TrainOptions(data=data))
    end = read_transactions(data)["tx_datetime"].max().to_pydatetime()
    start = (end - timedelta(days=REPLAY_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    materialize_with_progress(spark_session(settings), settings, data, until=start)
    published = replay(settings, data, start, None, None)
    stats = build_worker(settings).run(max_events=published.transactions, idle_exit_s=30)
    sink(settings, idle_exit_s=5)
    compact(settings)  # a demo run again replays the week: one row per transaction stays
    checked = run_monitor(settings, Window(start, None))
    return DemoResult(
        model_version=summary.version,
        alias=summary.alias,
        metrics=summary.metrics,
        replayed=published.transactions,
        scored=stats.scored,
        dead_letters=stats.dead_letters,
        events_per_s=stats.scored / stats.seconds if stats.seconds else 0.0,
        verdict=_verdict_line(checked.skew_breaches, checked.drift_alerts),
        report=str(checked.report),
    )


def _verdict_line(skew: list[str], drift: list[str]) -> str:
    if not skew and not drift:
        return "no skew, no drift alert"
    return "; ".join([*skew, *(f"drift alert {line}" for line in drift)])
