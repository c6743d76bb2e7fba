"""Model versions in the MLflow registry: the quality gate, promotion and rollback.

A new version gets the alias `challenger`. It becomes `champion` when its test average
precision is at least the current champion's on the same test window, or when there is no
champion. Every promotion is appended to the registered model's tag `champion_history`, so
`rollback` can move the champion back to the one before, and back again further.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
GATE_METRIC = "test_average_precision"
METRICS = ("test_auc_roc", "test_average_precision", "test_card_precision_at_100")


class RegistryError(RuntimeError):
    """A registry operation is not possible (no such version, nothing to roll back to)."""


@dataclass(frozen=True)
class VersionRow:
    """One model version as `skewless model list` shows it."""

    version: str
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    run_id: str
    created_ms: int


def passes_gate(challenger: float, champion: float | None) -> bool:
    """True if the challenger's score is at least the champion's (or there is no champion)."""
    return champion is None or challenger >= champion


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version the `champion` alias points at, or None."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def history(client: MlflowClient, name: str) -> list[str]:
    """Versions that were champion, oldest first; the last one is the current champion."""
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return [str(version) for version in json.loads(raw)] if raw else []


def _save_history(client: MlflowClient, name: str, versions: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(versions))


def promote(client: MlflowClient, name: str, version: str) -> None:
    """Make `version` the champion and record it in the history."""
    client.get_model_version(name, version)  # raises if there is no such version
    if champion_version(client, name) == version:
        return
    client.set_registered_model_alias(name, CHAMPION, version)
    _save_history(client, name, [*history(client, name), version])
    logger.info("%s version %s is now %s", name, version, CHAMPION)


def rollback(client: MlflowClient, name: str) -> str:
    """Move the champion back to the previous champion; returns that version."""
    versions = history(client, name)
    current = champion_version(client, name)
    while versions and versions[-1] == current:
        versions.pop()
    if not versions:
        raise RegistryError(f"{name}: no earlier champion to roll back to")
    previous = versions[-1]
    client.set_registered_model_alias(name, CHAMPION, previous)
    _save_history(client, name, versions)
    logger.info("%s rolled back: champion %s -> %s", name, current, previous)
    return previous


def list_versions(client: MlflowClient, name: str) -> list[VersionRow]:
    """Every version of `name`, newest first, with its aliases and test metrics."""
    aliases: dict[str, list[str]] = {}
    for alias, version_of_alias in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version_of_alias), []).append(alias)
    rows = []
    for version in client.search_model_versions(f"name = '{name}'"):
        metrics = {}
        if version.run_id:
            run_metrics = client.get_run(version.run_id).data.metrics
            metrics = {key: run_metrics[key] for key in METRICS if key in run_metrics}
        rows.append(
            VersionRow(
                version=str(version.version),
                aliases=tuple(sorted(aliases.get(str(version.version), []))),
                metrics=metrics,
                run_id=version.run_id or "",
                created_ms=int(version.creation_timestamp or 0),
            )
        )
    return sorted(rows, key=lambda row: int(row.version), reverse=True)
