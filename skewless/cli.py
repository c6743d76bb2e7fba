"""The `skewless` command line: one Typer app, one sub-command group per stage."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from skewless import services
from skewless.services import mlflow_server
from skewless.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective settings.")
services_app = typer.Typer(no_args_is_help=True, help="Local Kafka, Redis and MLflow servers.")
app.add_typer(config_app, name="config")
app.add_typer(services_app, name="services")

console = Console()


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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    for noisy in ("kafka", "urllib3", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        ctx.obj = load_settings()
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective settings as NAME=value lines (secrets masked)."""
    for line in _settings(ctx).as_env_lines():
        typer.echo(line)


@services_app.command("install")
def services_install(ctx: typer.Context) -> None:
    """Install what the servers need: Java check, Redis package, Kafka jars."""
    services.install(_settings(ctx))
    typer.echo("services: installed")


@services_app.command("up")
def services_up(
    ctx: typer.Context,
    mlflow: Annotated[bool, typer.Option(help="also start the MLflow server")] = True,
) -> None:
    """Start Kafka, Redis and MLflow on loopback (idempotent) and create the topics."""
    settings = _settings(ctx)
    services.up(settings, with_mlflow=mlflow)
    _print_status(settings)


@services_app.command("status")
def services_status(ctx: typer.Context) -> None:
    """Show pid and health of each server; exit 1 if one is unhealthy."""
    if not _print_status(_settings(ctx)):
        raise typer.Exit(1)


@services_app.command("down")
def services_down(ctx: typer.Context) -> None:
    """Stop every server started by `services up`, whole process groups."""
    stopped = services.down(_settings(ctx))
    typer.echo(f"services: stopped {', '.join(stopped) if stopped else 'nothing (none running)'}")


@services_app.command("mlflow-ui")
def services_mlflow_ui(ctx: typer.Context) -> None:
    """Start the MLflow server (if needed) and print the UI address."""
    settings = _settings(ctx)
    mlflow_server.start(settings)
    typer.echo(f"MLflow UI: {mlflow_server.url(settings)}")


def _print_status(settings: Settings) -> bool:
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
    except services.ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
