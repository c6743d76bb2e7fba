"""Model versions in the MLflow registry: the quality gate, promotion and rollback.

A new version gets the alias `challenger`. It becomes `champion` when its test average
precision is at least the current champion's on the same test window, or when there is no
champion. Every move of the champion (the gate's promotion, a manual promotion, a rollback) is
appended to the registered model's champion history, one tag per move
(`champion_history.000001`, ...) with who moved it, when, from which version to which; entries
are never rewritten. `rollback` walks that history back: to the champion before, and back
again further.

This module imports MLflow's client only (no torch, no training code), so the registry commands
answer quickly.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from skewless.mlflow_env import apply_offline_env
from skewless.settings import Settings

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
"""Prefix of the per-move tags; as a tag of its own, the older format: a JSON list of versions."""
METRIC_NAMES = ("auc_roc", "average_precision", "card_precision_at_100")
PROTOCOL_PREFIX = "test_protocol_"
"""Test figures on the handbook's protocol: the test window without the transactions of cards
already known compromised on their day (`skewless.known_frauds`). They compare with the
published figures and the quality gate reads them."""
WHOLE_WINDOW_PREFIX = "test_all_"
"""Test figures on every transaction of the test window, known compromised cards included."""
METRICS = tuple(
    prefix + name for prefix in (PROTOCOL_PREFIX, WHOLE_WINDOW_PREFIX) for name in METRIC_NAMES
)
"""The test metrics logged with every model version (`skewless.fraud_metrics.quality_metrics`)."""
GATE_METRIC = f"{PROTOCOL_PREFIX}average_precision"
"""The gate compares average precision on the handbook's protocol."""

GATE = "gate"
PROMOTE = "promote"
ROLLBACK = "rollback"


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


@dataclass(frozen=True)
class ChampionMove:
    """One move of the champion alias, as the history records it."""

    seq: int
    action: str
    from_version: str | None
    to_version: str
    by: str
    at: str
    """UTC, ISO 8601; empty for moves recorded in the older format."""

    @property
    def tag_key(self) -> str:
        return f"{HISTORY_TAG}.{self.seq:06d}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChampionMove:
        fields = json.loads(text)
        return cls(
            seq=int(fields["seq"]),
            action=str(fields["action"]),
            from_version=None if fields["from_version"] is None else str(fields["from_version"]),
            to_version=str(fields["to_version"]),
            by=str(fields["by"]),
            at=str(fields["at"]),
        )


def client(settings: Settings) -> MlflowClient:
    """A registry client on the settings' tracking URI (no experiment set up, nothing written)."""
    apply_offline_env()
    return MlflowClient(tracking_uri=settings.tracking_uri)


def operator() -> str:
    """Who is moving the champion: `user@host` of this process."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def passes_gate(challenger: float, champion: float | None) -> bool:
    """True if the challenger's score is at least the champion's (or there is no champion)."""
    return champion is None or challenger >= champion


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version the `champion` alias points at, or None."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def history(client: MlflowClient, name: str) -> list[ChampionMove]:
    """Every move of the champion, oldest first; the last one made the current champion."""
    tags = client.get_registered_model(name).tags
    return parse_history(tags)


def parse_history(tags: dict[str, str]) -> list[ChampionMove]:
    """The moves recorded in a registered model's tags, oldest first.

    Versions in the older format (one JSON list of versions) come first, as promotions of
    unknown author and time.
    """
    moves: list[ChampionMove] = []
    previous: str | None = None
    for version in json.loads(tags.get(HISTORY_TAG) or "[]"):
        moves.append(
            ChampionMove(len(moves) + 1, PROMOTE, previous, str(version), by="unknown", at="")
        )
        previous = str(version)
    prefix = f"{HISTORY_TAG}."
    recorded = [ChampionMove.from_json(v) for k, v in tags.items() if k.startswith(prefix)]
    return moves + sorted(recorded, key=lambda move: move.seq)


def champion_stack(moves: Iterable[ChampionMove]) -> list[str]:
    """The champions a rollback walks back through, the current one last.

    A promotion (by the gate or by hand) stacks its version; a rollback unstacks down to the
    version it moved to.
    """
    stack: list[str] = []
    for move in moves:
        if move.action == ROLLBACK:
            while stack and stack[-1] != move.to_version:
                stack.pop()
            if not stack:
                stack.append(move.to_version)
        else:
            stack.append(move.to_version)
    return stack


def _record(
    client: MlflowClient,
    name: str,
    moves: Sequence[ChampionMove],
    action: str,
    from_version: str | None,
    to_version: str,
) -> ChampionMove:
    """Append one move to the history as a new tag; earlier entries are never rewritten."""
    seq = max((move.seq for move in moves), default=0) + 1
    at = datetime.now(UTC).isoformat(timespec="seconds")
    move = ChampionMove(seq, action, from_version, to_version, operator(), at)
    client.set_registered_model_tag(name, move.tag_key, move.to_json())
    return move


def promote(client: MlflowClient, name: str, version: str, action: str = PROMOTE) -> None:
    """Make `version` the champion and append the move to the history (`action`: who decided,
    the gate or a person)."""
    if action not in (GATE, PROMOTE):
        raise ValueError(f"a promotion is made by {GATE!r} or {PROMOTE!r}, not {action!r}")
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{name} has no version {version}") from exc
    current = champion_version(client, name)
    if current == version:
        return
    client.set_registered_model_alias(name, CHAMPION, version)
    _record(client, name, history(client, name), action, current, version)
    logger.info("%s version %s is now %s (was %s)", name, version, CHAMPION, current)


def rollback(client: MlflowClient, name: str) -> str:
    """Move the champion back to the previous champion; returns that version.

    The rollback is appended to the history as a move of its own.
    """
    moves = history(client, name)
    versions = champion_stack(moves)
    current = champion_version(client, name)
    while versions and versions[-1] == current:
        versions.pop()
    if not versions:
        raise RegistryError(f"{name}: no earlier champion to roll back to")
    previous = versions[-1]
    client.set_registered_model_alias(name, CHAMPION, previous)
    _record(client, name, moves, ROLLBACK, current, previous)
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
