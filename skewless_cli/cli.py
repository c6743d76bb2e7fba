"""The `skewless` command line: one Typer app, one sub-command group per stage."""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Column, Table

from skewless import logs
from skewless.services.process import ServiceError
from skewless.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from monitoring.monitor import Window
    from skewless_cli.demo import DemoResult
    from training.model import TrainingParams

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective settings.")
services_app = typer.Typer(
    no_args_is_help=True, help="Local Kafka, Redis, MLflow and Prometheus servers."
)
app.add_typer(config_app, name="config")
data_app = typer.Typer(no_args_is_help=True, help="Import and inspect transaction data.")
monitor_app = typer.Typer(no_args_is_help=True, help="Skew, drift, data quality, live quality.")
app.add_typer(monitor_app, name="monitor")
model_app = typer.Typer(
    no_args_is_help=True, help="Registered model versions: list, history, promote, rollback."
)
app.add_typer(model_app, name="model")
app.add_typer(services_app, name="services")
app.add_typer(data_app, name="data")

NOT_A_TERMINAL_WIDTH = 1000
"""Columns of output that is not a terminal (a pipe, a log file): rich would cut it at 80."""


def output_console(file: IO[str] | None = None, stderr: bool = False) -> Console:
    """A console that prints paths whole: a terminal's own width, else wide enough for a line."""
    console = Console(file=file, stderr=stderr)
    if console.is_terminal:
        return console
    return Console(file=file, stderr=stderr, width=NOT_A_TERMINAL_WIDTH)


console = output_console()


def log_handler(stream: IO[str] | None = None) -> logging.Handler:
    """Rich log lines on a terminal; plain, unpadded lines in a pipe or a log file."""
    stderr = Console(file=stream, stderr=stream is None)
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    )
    return handler


MOMENT_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]
"""How a UTC moment is written on the command line."""


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """skewless: one feature declaration for training and serving, skew measured."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    logs.configure(log_handler(), settings.runtime_dir, verbose)
    ctx.obj = settings


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective settings as NAME=value lines (secrets masked)."""
    for line in _settings(ctx).effective_env_lines():
        typer.echo(line)


@services_app.command("install")
def services_install(ctx: typer.Context) -> None:
    """Install what the servers need: Java check, Redis and Prometheus packages, Kafka jars."""
    from skewless import services

    services.install(_settings(ctx))
    typer.echo("services: installed")


@services_app.command("up")
def services_up(
    ctx: typer.Context,
    mlflow: Annotated[bool, typer.Option(help="also start the MLflow server")] = True,
    prometheus: Annotated[bool, typer.Option(help="also start Prometheus")] = True,
) -> None:
    """Start Kafka, Redis, MLflow and Prometheus on loopback (idempotent), create the topics."""
    from skewless import services

    settings = _settings(ctx)
    services.up(settings, with_mlflow=mlflow, with_prometheus=prometheus)
    _print_status(settings)


@services_app.command("status")
def services_status(ctx: typer.Context) -> None:
    """Show pid and health of each server; exit 1 if one is unhealthy."""
    if not _print_status(_settings(ctx)):
        raise typer.Exit(1)


@services_app.command("down")
def services_down(ctx: typer.Context) -> None:
    """Stop every server started by `services up`, whole process groups."""
    from skewless import services

    stopped = services.down(_settings(ctx))
    typer.echo(f"services: stopped {', '.join(stopped) if stopped else 'nothing (none running)'}")


@services_app.command("mlflow-ui")
def services_mlflow_ui(ctx: typer.Context) -> None:
    """Start the MLflow server (if needed) and print the UI address."""
    from skewless.services import mlflow_server

    settings = _settings(ctx)
    mlflow_server.start(settings)
    typer.echo(f"MLflow UI: {mlflow_server.url(settings)}")


@app.command("simulate")
def simulate_command(
    ctx: typer.Context,
    customers: Annotated[int, typer.Option(help="number of card holders")] = 5000,
    terminals: Annotated[int, typer.Option(help="number of points of sale")] = 10000,
    start_date: Annotated[
        datetime, typer.Option(formats=["%Y-%m-%d"], help="first simulated day (UTC)")
    ] = datetime(2026, 4, 1),
    days: Annotated[int, typer.Option(help="number of simulated days")] = 183,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same data")] = 42,
    name: Annotated[str, typer.Option(help="data set name under the data folder")] = "demo",
    if_missing: Annotated[bool, typer.Option(help="do nothing if the data set exists")] = False,
) -> None:
    """Generate card transactions with the three fraud scenarios into a parquet data set."""
    from skewless.data import dataset_path, write_transactions
    from skewless.simulator import SimulationParams, simulate

    settings = _settings(ctx)
    if if_missing and dataset_path(settings, name).exists():
        typer.echo(f"simulate: {dataset_path(settings, name)} exists, kept")
        return
    params = SimulationParams(
        n_customers=customers,
        n_terminals=terminals,
        start_date=start_date.date(),
        n_days=days,
        seed=seed,
    )
    started = time.perf_counter()
    result = simulate(params)
    elapsed = time.perf_counter() - started
    path = write_transactions(result.transactions, dataset_path(settings, name))
    table = Table("simulated", "value")
    table.add_row("transactions", f"{len(result.transactions):,}")
    table.add_row("fraud rate", f"{result.fraud_rate:.3%}")
    for scenario, count in result.fraud_by_scenario.items():
        table.add_row(f"frauds: {scenario}", f"{count:,}")
    table.add_row("seconds", f"{elapsed:.1f}")
    console.print(table)
    typer.echo(f"simulate: wrote {path}")


@data_app.command("import")
def data_import(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, help="parquet or CSV, canonical schema")],
    name: Annotated[str | None, typer.Option(help="data set name (default: file stem)")] = None,
) -> None:
    """Validate a transactions file with the data-quality suite and import it if it passes."""
    from skewless.data import DataError, import_transactions

    try:
        result = import_transactions(path, _settings(ctx), name=name)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(result.report.describe())
    typer.echo(f"data import: {result.path} (use --data {result.path})")


@app.command("apply")
def apply_command(ctx: typer.Context) -> None:
    """Register the feature repository with Feast (feast apply, addresses from settings)."""
    from skewless.feature_store import apply

    apply(_settings(ctx))


@app.command("plan")
def plan_command(ctx: typer.Context) -> None:
    """Show what `apply` would change (feast plan); fails on a broken definition."""
    from skewless.feature_store import plan

    plan(_settings(ctx))


DataOption = Annotated[
    Path | None, typer.Option("--data", help="transactions parquet (default: the demo data)")
]


def _training_params(
    epochs: int,
    seed: int,
    hidden_sizes: str,
    dropout: float,
    learning_rate: float,
    imbalance: str,
    history_units: int,
    trees: int = 0,
    tree_depth: int = 6,
    tree_l2: float = 0.0,
) -> TrainingParams:
    """The command line's model settings; a bad one exits 2 naming its option."""
    from training.model import TrainingParams

    if imbalance not in ("none", "pos_weight", "oversample"):
        raise typer.BadParameter("none, pos_weight or oversample", param_hint="--imbalance")
    try:
        sizes = tuple(int(size) for size in hidden_sizes.split(",") if size.strip())
    except ValueError as exc:
        raise typer.BadParameter(
            "whole numbers, comma separated", param_hint="--hidden-sizes"
        ) from exc
    try:
        return TrainingParams(
            hidden_sizes=sizes,
            dropout=dropout,
            learning_rate=learning_rate,
            imbalance=imbalance,  # type: ignore[arg-type]
            max_epochs=epochs,
            seed=seed,
            history_units=history_units,
            trees=trees,
            tree_depth=tree_depth,
            tree_l2=tree_l2,
        )
    except ValueError as exc:
        option = "--trees" if trees else "--hidden-sizes"
        raise typer.BadParameter(str(exc), param_hint=option) from exc


@app.command("train")
def train_command(
    ctx: typer.Context,
    data: DataOption = None,
    train_start: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="first training day (UTC)")
    ] = None,
    train_days: Annotated[int, typer.Option(help="training window in days")] = 7,
    delay_days: Annotated[
        int | None,
        typer.Option(help="days between train and test (default: the declarations' label delay)"),
    ] = None,
    test_days: Annotated[int, typer.Option(help="test window in days")] = 7,
    epochs: Annotated[int, typer.Option(help="maximum epochs (early stopping ends sooner)")] = 100,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    hidden_sizes: Annotated[
        str,
        typer.Option(help="hidden layer sizes, e.g. 128,64 ('' trains a logistic regression)"),
    ] = "64,32",
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="dropout share")] = 0.0,
    learning_rate: Annotated[float, typer.Option(min=1e-9, help="Adam's learning rate")] = 1e-3,
    imbalance: Annotated[
        str, typer.Option(help="class imbalance: none, pos_weight or oversample")
    ] = "none",
    history_units: Annotated[
        int,
        typer.Option(
            min=0, help="GRU units over the declared transaction history (0: no sequence model)"
        ),
    ] = 0,
    trees: Annotated[
        int,
        typer.Option(
            min=0,
            help="boosting rounds: > 0 trains LightGBM's boosted trees (at --learning-rate) "
            "instead of a network",
        ),
    ] = 0,
    tree_depth: Annotated[int, typer.Option(min=1, help="the boosted trees' depth")] = 6,
    tree_l2: Annotated[
        float, typer.Option(min=0.0, help="L2 regularisation of the trees' leaf values")
    ] = 0.0,
    materialize: Annotated[bool, typer.Option(help="write the latest features to Redis")] = True,
    folds: Annotated[
        int,
        typer.Option(
            min=1,
            help="prequential folds, each a test window further back (the handbook's 4); "
            "the latest fold's model is registered, the gate compares means over the folds",
        ),
    ] = 4,
    search: Annotated[
        bool,
        typer.Option(
            help="choose the model family and hyperparameters on validation folds that end "
            "before the test folds (training.search), with a logistic-regression baseline"
        ),
    ] = False,
    search_workers: Annotated[
        int, typer.Option(min=1, help="processes training the search's candidates")
    ] = 2,
) -> None:
    """Backfill features with Spark, train the torch model, evaluate, register and gate it."""

    from skewless.data import resolve_data
    from training.pipeline import TrainOptions, run_training

    settings = _settings(ctx)
    options = TrainOptions(
        data=resolve_data(settings, data),
        train_start=train_start.date() if train_start else None,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
        params=_training_params(
            epochs,
            seed,
            hidden_sizes,
            dropout,
            learning_rate,
            imbalance,
            history_units,
            trees,
            tree_depth,
            tree_l2,
        ),
        materialize=materialize,
        folds=folds,
        search=search,
        search_workers=search_workers,
    )
    summary = run_training(settings, options)
    table = Table("train", "value")
    table.add_row("model", f"{settings.model_name} version {summary.version} ({summary.alias})")
    for name, value in summary.metrics.items():
        table.add_row(name, f"{value:.4f}")
    if len(summary.fold_metrics) > 1:
        for index, metrics in enumerate(summary.fold_metrics):
            table.add_row(f"fold {index} protocol AUC / AP / CP@100", _protocol_figures(metrics))
    if summary.selection is not None:
        selection = summary.selection
        table.add_row("chosen on validation folds", f"{selection.chosen} ({selection.family})")
        table.add_row(
            "validation protocol AP (chosen)",
            f"{selection.validation['validation_protocol_average_precision_mean']:.4f} ± "
            f"{selection.validation['validation_protocol_average_precision_std']:.4f}"
            f" ({selection.candidates} candidates)",
        )
        table.add_row("baseline", selection.baseline)
        for index, metrics in enumerate(selection.baseline_fold_metrics):
            table.add_row(f"baseline fold {index} AUC / AP / CP@100", _protocol_figures(metrics))
        table.add_row(
            "baseline mean AUC / AP / CP@100",
            _protocol_figures(
                {
                    key: sum(m[key] for m in selection.baseline_fold_metrics)
                    / len(selection.baseline_fold_metrics)
                    for key in selection.baseline_fold_metrics[0]
                }
            ),
        )
    table.add_row(
        "windows",
        f"train {summary.windows['train_start'][:10]} .. "
        f"{summary.windows['train_end'][:10]}, test {summary.windows['test_start'][:10]}"
        f" .. {summary.windows['test_end'][:10]}",
    )
    for stage, seconds in summary.stage_seconds.items():
        table.add_row(f"seconds: {stage}", f"{seconds:.1f}")
    console.print(table)
    typer.echo(
        f"MLflow UI: make mlflow-ui, then http://{settings.mlflow_host}:{settings.mlflow_port}"
        f"/#/experiments (run {summary.run_id})"
    )


def _protocol_figures(metrics: dict[str, float]) -> str:
    from skewless.registry import METRIC_NAMES, PROTOCOL_PREFIX

    return " / ".join(f"{metrics[PROTOCOL_PREFIX + name]:.4f}" for name in METRIC_NAMES)


@app.command("retrain")
def retrain_command(
    ctx: typer.Context,
    data: DataOption = None,
    every: Annotated[
        str | None,
        typer.Option(help="run again every DURATION (90s, 15m, 1h, 1d) until Ctrl-C or SIGTERM"),
    ] = None,
    max_runs: Annotated[
        int | None, typer.Option(min=1, help="with --every: stop after this many runs")
    ] = None,
    on_drift: Annotated[
        bool,
        typer.Option("--on-drift", help="retrain only if the drift check of the champion alerts"),
    ] = False,
    drift_window: Annotated[
        str, typer.Option(help="served event time the drift check covers, up to the latest")
    ] = "7d",
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1, help="maximum epochs (default: the champion's; early stopping ends sooner)"
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the champion's)")] = None,
    materialize: Annotated[
        bool, typer.Option(help="also rewrite Redis (a running worker keeps it current)")
    ] = False,
    full_backfill: Annotated[
        bool, typer.Option("--full-backfill", help="recompute every day, not only changed ones")
    ] = False,
) -> None:
    """Retrain on the newest data: changed days of the backfill, newest window, gate, promotion.
    The model trained is the champion's family and settings (as its run logged them)."""
    import threading
    from functools import partial

    from skewless.data import DataError, resolve_data
    from training.retrain import (
        ChampionSettingsError,
        DriftCheck,
        RetrainOptions,
        RetrainOutcome,
        install_signal_handlers,
        parse_duration,
        run_every,
        run_once,
    )

    settings = _settings(ctx)
    try:
        period = parse_duration(every) if every is not None else None
        recent = parse_duration(drift_window)
        if max_runs is not None and period is None:
            raise ValueError("--max-runs bounds a schedule: give --every too")
        path = resolve_data(settings, data)
    except (ValueError, DataError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    options = RetrainOptions(
        data=path,
        max_epochs=epochs,
        seed=seed,
        materialize=materialize,
        full_backfill=full_backfill,
    )
    check: DriftCheck | None = None
    if on_drift:
        from monitoring.monitor import champion_drift

        check = partial(champion_drift, settings, recent)

    def report(outcome: RetrainOutcome) -> None:
        typer.echo(f"retrain: {outcome.line} ({outcome.seconds:.0f} s)")

    if period is None:
        try:
            outcome = run_once(settings, options, check)
        except ChampionSettingsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        report(outcome)
        return
    stop = threading.Event()
    install_signal_handlers(stop)
    run = partial(run_once, settings, options, check)
    outcomes = run_every(run, period, stop, max_runs, on_outcome=report)
    retrained = sum(outcome.retrained for outcome in outcomes)
    typer.echo(f"retrain: stopped after {len(outcomes)} runs, {retrained} retrained")


@app.command("materialize")
def materialize_command(
    ctx: typer.Context,
    data: DataOption = None,
    until: Annotated[
        datetime | None,
        typer.Option(formats=MOMENT_FORMATS, help="state as of (UTC)"),
    ] = None,
    remove_other_layouts: Annotated[
        bool,
        typer.Option(
            "--remove-other-layouts",
            help="also remove the state's keys of other layouts (an older version's, other "
            "tiles or decimals): only once no worker reading them runs",
        ),
    ] = False,
) -> None:
    """Write the latest feature values and the streaming state as of --until to Redis."""
    from datetime import UTC

    from skewless.data import resolve_data
    from skewless.spark import spark_session
    from training.pipeline import materialize_with_progress

    settings = _settings(ctx)
    moment = until.replace(tzinfo=UTC) if until else None
    path = resolve_data(settings, data)
    written = materialize_with_progress(
        spark_session(settings), settings, path, moment, remove_other_layouts
    )
    typer.echo(f"materialize: {written}")


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    max_events: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    idle_exit_seconds: Annotated[
        float | None, typer.Option(help="stop after this long without events")
    ] = None,
) -> None:
    """Score transactions from Kafka with the champion model (Ctrl-C or SIGTERM stops cleanly)."""
    from serving.delivery import DeliveryError, DeliveryStoppedError
    from serving.preflight import ConfigurationError, check_serving
    from serving.scoring import ModelContractError
    from serving.worker import build_worker, freeze_start_up_objects

    settings = _settings(ctx)
    try:
        check_serving(settings, kafka_worker=True)
        worker = build_worker(settings)
    except (ConfigurationError, ModelContractError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except DeliveryStoppedError as exc:  # the transactional id is taken or not authorized
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except DeliveryError as exc:  # Kafka went away between the check and the start
        typer.echo(f"error: Kafka at {settings.kafka_bootstrap} did not answer: {exc}", err=True)
        raise typer.Exit(1) from None
    freeze_start_up_objects()
    metrics_server = worker.metrics.serve(settings.metrics_port)
    worker.install_signal_handlers()
    typer.echo(
        f"serve: {settings.topic_transactions} -> {settings.topic_scores}, model "
        f"{settings.model_name} v{worker.core.model.version}, {settings.delivery}, "
        f"metrics http://127.0.0.1:{settings.metrics_port}/metrics"
    )
    try:
        stats = worker.run(max_events=max_events, idle_exit_s=idle_exit_seconds)
    except DeliveryStoppedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        # Before the interpreter finalizes: uvloop's timer callback in a server thread still
        # running then takes the GIL of an interpreter that is gone (SIGSEGV at exit).
        if metrics_server is not None:
            metrics_server.stop()
    rate = stats.scored / stats.seconds if stats.seconds else 0.0
    typer.echo(
        f"serve: consumed {stats.consumed}, scored {stats.scored}, dead letters "
        f"{stats.dead_letters}, labels {stats.labels}, {rate:.0f} events/s, "
        f"batches read again {stats.rewound}, versions {sorted(stats.versions)}"
    )


@app.command("serve-http")
def serve_http_command(ctx: typer.Context) -> None:
    """Score transactions POSTed to /score (same core as `serve`); Ctrl-C stops."""
    from serving.http import Enricher, EnricherServer, HttpLimits
    from serving.metrics import ScoringMetrics
    from serving.preflight import ConfigurationError, check_serving
    from serving.scoring import ModelContractError, build_core
    from serving.validation import EventLimits

    settings = _settings(ctx)
    try:
        check_serving(settings, kafka_worker=False)
        core = build_core(settings)
    except (ConfigurationError, ModelContractError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    enricher = Enricher(
        core,
        ScoringMetrics(),
        settings.score_threshold,
        EventLimits.from_settings(settings),
        HttpLimits.from_settings(settings),
    )
    server = EnricherServer(enricher, "127.0.0.1", settings.http_port)
    typer.echo(f"serve-http: POST http://127.0.0.1:{server.port}/score")
    try:
        server.run()
    finally:
        core.watcher.stop()


@app.command("demo")
def demo_command(ctx: typer.Context) -> None:
    """The whole loop once: train, materialize, replay the last week, serve it."""
    from skewless_cli.demo import run_demo

    settings = _settings(ctx)
    result = run_demo(settings)
    console.print(demo_table(settings, result))
    typer.echo(f"demo: done; MLflow UI at http://{settings.mlflow_host}:{settings.mlflow_port}")


def demo_table(settings: Settings, result: DemoResult) -> Table:
    """The demo's closing table; values wrap on a narrow terminal instead of being cut."""
    table = Table("demo", Column("value", overflow="fold"))
    table.add_row("model", f"{settings.model_name} v{result.model_version} ({result.alias})")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("replayed transactions", f"{result.replayed:,}")
    table.add_row("scored", f"{result.scored:,} ({result.events_per_s:,.0f} events/s)")
    table.add_row("dead letters", str(result.dead_letters))
    table.add_row("monitoring", result.verdict)
    table.add_row("report", result.report)
    return table


SinceOption = Annotated[
    datetime | None,
    typer.Option(formats=MOMENT_FORMATS, help="from this event time (UTC)"),
]
UntilOption = Annotated[
    datetime | None,
    typer.Option(formats=MOMENT_FORMATS, help="before this event time (UTC)"),
]


def _window(since: datetime | None, until: datetime | None) -> Window:
    from datetime import UTC

    from monitoring.monitor import Window

    return Window(
        since.replace(tzinfo=UTC) if since else None, until.replace(tzinfo=UTC) if until else None
    )


@monitor_app.command("sink")
def monitor_sink(
    ctx: typer.Context,
    idle_exit_seconds: Annotated[float, typer.Option(help="stop when idle this long")] = 5.0,
) -> None:
    """Copy the worker's feature log from Kafka into the partitioned online log."""
    from monitoring.feature_log import sink

    rows = sink(_settings(ctx), idle_exit_s=idle_exit_seconds)
    typer.echo(f"monitor sink: {rows} rows")


@monitor_app.command("compact")
def monitor_compact(
    ctx: typer.Context,
    before: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="only the days of event time before this date"),
    ] = None,
) -> None:
    """Rewrite each day of the online log as one file, one row per transaction (its last
    score): what replays and restarts logged twice goes."""
    from monitoring.feature_log import compact

    done = compact(_settings(ctx), before.date() if before else None)
    typer.echo(
        f"monitor compact: {done.partitions} days, {done.files} files, "
        f"{done.rows_before:,} rows -> {done.rows_after:,}; "
        f"{done.stale_partials} partial files of a writer that died removed"
    )


def _run_checks(ctx: typer.Context, since: datetime | None, until: datetime | None,
                skew: bool, report: bool) -> None:  # fmt: skip
    from monitoring.monitor import NothingServedError, run_monitor

    window = _window(since, until)
    try:
        result = run_monitor(_settings(ctx), window, with_skew=skew, with_report=report)
    except NothingServedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if result.skew is not None:
        table = Table("feature", "rows", "mismatches", "rate", "max |diff|", "JS")
        for item in result.skew:
            table.add_row(item.name, f"{item.total:,}", f"{item.mismatches:,}",
                          f"{item.mismatch_rate:.4%}", f"{item.max_abs_diff:.3g}",
                          f"{item.js_divergence:.4f}")  # fmt: skip
        console.print(table)
    table = Table("feature", "PSI", "JS", "KS", "status")
    for drift in result.drift:
        table.add_row(drift.name, f"{drift.psi:.4f}", f"{drift.js:.4f}", f"{drift.ks:.4f}",
                      drift.status)  # fmt: skip
    console.print(table)
    for line in result.skew_breaches:
        typer.echo(f"SKEW: {line}")
    for line in result.drift_alerts:
        typer.echo(f"DRIFT ALERT: {line}")
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    typer.echo(
        f"monitor: {result.served:,} served events, model v{result.model_version}; {seconds}"
    )
    if result.report:
        typer.echo(f"report: {result.report}\nsummary: {result.summary}")
    if not result.ok:
        raise typer.Exit(1)


@monitor_app.command("skew")
def monitor_skew(ctx: typer.Context, since: SinceOption = None, until: UntilOption = None) -> None:
    """Online features against Feast's offline recomputation; exit 1 on a breach."""
    _run_checks(ctx, since, until, skew=True, report=False)


@monitor_app.command("drift")
def monitor_drift(ctx: typer.Context, since: SinceOption = None, until: UntilOption = None) -> None:
    """Served features and scores against the training reference; exit 1 on an alert."""
    _run_checks(ctx, since, until, skew=False, report=False)


@monitor_app.command("report")
def monitor_report(
    ctx: typer.Context, since: SinceOption = None, until: UntilOption = None
) -> None:
    """All checks and the self-contained HTML report (+ JSON summary); exit 1 on an alert."""
    _run_checks(ctx, since, until, skew=True, report=True)


@model_app.command("list")
def model_list(ctx: typer.Context) -> None:
    """Versions with their aliases and test metrics."""
    from skewless import registry

    settings = _settings(ctx)
    table = Table("version", "aliases", *registry.METRICS, "run")
    try:
        rows = registry.list_versions(registry.connect(settings), settings.model_name)
    except registry.RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for row in rows:
        table.add_row(
            row.version,
            ", ".join(row.aliases),
            *(f"{row.metrics[m]:.4f}" if m in row.metrics else "-" for m in registry.METRICS),
            row.run_id[:8],
        )
    console.print(table)


@model_app.command("history")
def model_history(ctx: typer.Context) -> None:
    """Every move of the champion: who, when, from which version to which."""
    from skewless import registry

    settings = _settings(ctx)
    table = Table("#", "action", "from", "to", "by", "at (UTC)")
    try:
        moves = registry.history(registry.connect(settings), settings.model_name)
    except registry.RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for move in moves:
        table.add_row(
            str(move.seq), move.action, move.from_version or "-", move.to_version, move.by, move.at
        )
    console.print(table)


@model_app.command("promote")
def model_promote(
    ctx: typer.Context, version: Annotated[str, typer.Argument(help="version to make champion")]
) -> None:
    """Make VERSION the champion (appended to the champion history)."""
    from skewless import registry

    settings = _settings(ctx)
    try:
        registry.promote(registry.connect(settings), settings.model_name, version)
    except registry.RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"model: {settings.model_name} version {version} is champion")


@model_app.command("rollback")
def model_rollback(ctx: typer.Context) -> None:
    """Move the champion back to the previous champion (appended to the champion history)."""
    from skewless import registry

    settings = _settings(ctx)
    try:
        version = registry.rollback(registry.connect(settings), settings.model_name)
    except registry.RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"model: {settings.model_name} champion rolled back to version {version}")


@app.command("replay")
def replay_command(
    ctx: typer.Context,
    data: DataOption = None,
    start: Annotated[
        datetime | None,
        typer.Option(formats=MOMENT_FORMATS, help="first event time (UTC)"),
    ] = None,
    end: Annotated[
        datetime | None,
        typer.Option(formats=MOMENT_FORMATS, help="end, exclusive (UTC)"),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="transactions per second (default: as fast as possible)"),
    ] = None,
) -> None:
    """Publish transactions in event-time order to Kafka, with their labels after the delay."""
    from datetime import UTC

    from serving.replay import ReplayError, replay
    from skewless.data import DataError, resolve_data

    settings = _settings(ctx)
    try:
        stats = replay(
            settings,
            resolve_data(settings, data),
            start.replace(tzinfo=UTC) if start else None,
            end.replace(tzinfo=UTC) if end else None,
            rate,
        )
    except (DataError, ReplayError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    table = Table("replay", "value")
    table.add_row("transactions", f"{stats.transactions:,} to {settings.topic_transactions}")
    table.add_row("labels", f"{stats.labels:,} to {settings.topic_labels}")
    table.add_row("seconds", f"{stats.seconds:.1f} (+{stats.prepare_seconds:.1f} preparing)")
    table.add_row("events/s", f"{stats.events_per_s:,.0f}")
    console.print(table)


def _print_status(settings: Settings) -> bool:
    from skewless import services

    table = Table("service", "address", "pid", "health")
    rows = services.status(settings)
    for row in rows:
        health = "[green]healthy[/green]" if row.healthy else "[red]down[/red]"
        table.add_row(row.name, row.address, str(row.pid or "-"), health)
    console.print(table)
    return all(row.healthy for row in rows)


def main() -> None:
    """Entry point of the `skewless` script; service errors become one clear line."""
    try:
        app()
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
