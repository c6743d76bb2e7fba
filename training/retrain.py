"""`skewless retrain`: the training pipeline again on the newest data: now, on a schedule, or
when the served features drift.

A run is `run_training` with an incremental backfill: only the days of the offline tables that
changed since the last backfill are recomputed (with the days whose windows reach back to
them), then the training set and model of the newest protocol window, the gate and the
promotion, exactly as `skewless train`. The label delay between the training and test windows
is the declarations' own. Workers pick up a promoted champion at their next alias poll.

With a drift check (the monitoring's check of what the champion served, passed in by the
caller), a run retrains only when that check alerts. `run_every` repeats runs on a period
until `stop` is set (SIGTERM or Ctrl-C through `install_signal_handlers`) or `max_runs` runs.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Protocol

from skewless import registry
from skewless.registry import GATE_METRIC
from skewless.settings import Settings
from training import tracking
from training.model import TrainingParams
from training.pipeline import TrainOptions, TrainSummary, run_training

logger = logging.getLogger(__name__)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


class DriftVerdict(Protocol):
    """What a drift check found: whether it alerts, and a line saying so."""

    @property
    def alerting(self) -> bool: ...

    def describe(self) -> str: ...


DriftCheck = Callable[[], DriftVerdict]


@dataclass(frozen=True)
class RetrainOptions:
    """The command line of `skewless retrain`."""

    data: Path
    params: TrainingParams | None = None
    """None: the champion's own settings, read from the run that registered it, so a retrain
    refreshes the model that serves whatever its family (the default network without one)."""
    max_epochs: int | None = None
    """Overrides the settings' (each member's, in an ensemble); None keeps them."""
    seed: int | None = None
    train_days: int = 7
    test_days: int = 7
    materialize: bool = False
    """Off by default: a running worker keeps the online features and window state itself."""
    full_backfill: bool = False


@dataclass(frozen=True)
class RetrainOutcome:
    """One run: whether it retrained, what it did in one line, the training summary if any."""

    retrained: bool
    line: str
    seconds: float
    summary: TrainSummary | None = None


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h30m`, `1d`, or plain seconds, as a timedelta (> 0)."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        seconds = float(cleaned)
    elif cleaned and _DURATION_PART.sub("", cleaned) == "":
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(cleaned)
        )
    else:
        raise ValueError(f"{text!r} is not a duration: write e.g. 90s, 15m, 1h30m or 1d")
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return timedelta(seconds=seconds)


class ChampionSettingsError(ValueError):
    """The champion's run logged a model setting that does not read back: nothing says what
    to train, so a retrain stops and names it."""


def retrain_params(settings: Settings, options: RetrainOptions) -> tuple[TrainingParams, str]:
    """The settings a retrain trains with, and where they come from in words: the options'
    own, else the champion's (as its run logged them), else the defaults.

    Raises ChampionSettingsError when a setting the champion's run logged does not parse.
    """
    params, source = options.params, "the given settings"
    if params is None:
        client = registry.client(settings)
        champion = registry.champion_version(client, settings.model_name)
        if champion is None:
            params, source = TrainingParams(), "the default settings (no champion)"
        else:
            logged = registry.version_run(client, settings.model_name, champion).data.params
            try:
                params = tracking.logged_params(logged)
            except ValueError as exc:
                raise ChampionSettingsError(
                    f"champion v{champion} of {settings.model_name}: {exc}; promote another "
                    "version (`skewless model promote VERSION`) or train one (`skewless train`)"
                ) from exc
            source = f"champion v{champion}'s settings"
            if "family" not in logged:  # registered from a run that logged no model settings
                source = f"the default settings (champion v{champion}'s run logged none)"
    if params.members:
        members = tuple(_overridden(member, options) for member in params.members)
        return replace(params, members=members), source
    return _overridden(params, options), source


def _overridden(params: TrainingParams, options: RetrainOptions) -> TrainingParams:
    return replace(
        params,
        max_epochs=params.max_epochs if options.max_epochs is None else options.max_epochs,
        seed=params.seed if options.seed is None else options.seed,
    )


def train_options(options: RetrainOptions, params: TrainingParams) -> TrainOptions:
    """The training run of a retrain: newest window, label delay from the declarations."""
    return TrainOptions(
        data=options.data,
        train_start=None,
        train_days=options.train_days,
        delay_days=None,  # the declarations' label delay
        test_days=options.test_days,
        params=params,
        materialize=options.materialize,
        incremental_backfill=not options.full_backfill,
    )


def describe_training(summary: TrainSummary, params: TrainingParams, source: str) -> str:
    """What a retrain produced, in words: version, gate decision, window, recomputed days, and
    the model family trained with whose settings."""
    decision = "promoted champion" if summary.alias == "champion" else "kept as challenger"
    days = ", ".join(f"{name} {count}" for name, count in summary.recomputed_days.items())
    ap = summary.metrics.get(GATE_METRIC, float("nan"))
    return (
        f"retrained version {summary.version} ({decision}, protocol test AP {ap:.4f}) on "
        f"{summary.windows['train_start'][:10]}..{summary.windows['train_end'][:10]}, "
        f"days recomputed: {days}; {params.family} with {source}"
    )


def run_once(
    settings: Settings, options: RetrainOptions, drift_check: DriftCheck | None = None
) -> RetrainOutcome:
    """One retrain; with `drift_check`, only if it alerts."""
    started = time.perf_counter()
    reason = ""
    if drift_check is not None:
        verdict = drift_check()
        if not verdict.alerting:
            line = f"{verdict.describe()}: nothing to do"
            return RetrainOutcome(False, line, time.perf_counter() - started)
        reason = f"{verdict.describe()}: "
    params, source = retrain_params(settings, options)
    summary = run_training(settings, train_options(options, params))
    line = reason + describe_training(summary, params, source)
    return RetrainOutcome(True, line, time.perf_counter() - started, summary)


def run_every(
    run: Callable[[], RetrainOutcome],
    every: timedelta,
    stop: threading.Event,
    max_runs: int | None = None,
    on_outcome: Callable[[RetrainOutcome], None] | None = None,
) -> list[RetrainOutcome]:
    """Call `run`, then wait for the next period, until `stop` is set or after `max_runs`.

    Runs start `every` apart (a run longer than the period is followed at once by the next).
    A run that fails is logged with its traceback and the schedule carries on: the next run
    is the retry. `stop` is looked at between runs, and ends a wait at once.
    """
    outcomes: list[RetrainOutcome] = []
    next_start = time.monotonic()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            outcome = run()
        except Exception as exc:  # a scheduled job outlives one failed run; the next retries
            logger.exception("retrain run failed; next run in %s", every)
            outcome = RetrainOutcome(False, f"failed: {exc}", time.perf_counter() - started)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if max_runs is not None and len(outcomes) >= max_runs:
            break
        next_start = max(next_start + every.total_seconds(), time.monotonic())
        stop.wait(next_start - time.monotonic())
    return outcomes


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and Ctrl-C set `stop`: the run in progress finishes, no other starts.

    A second Ctrl-C interrupts at once (Python's default handler is put back).
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping after the current run", signum)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
