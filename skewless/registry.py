"""Model versions in the MLflow registry: the quality gate, promotion and rollback.

A new version gets the alias `challenger`. It becomes `champion` when its test average
precision is at least the current champion's on the same test window, or when there is no
champion. Every move of the champion (the gate's promotion, a manual promotion, a rollback) is
appended to the registered model's champion history, one tag per move
(`champion_history.000001`, ...) with who moved it, when, from which version to which; entries
are never rewritten. `rollback` walks that history back: to the champion before, and back
again further.

The functions work with either of two clients of the same registry. `client` is MLflow's own
(`MlflowClient`, whatever the tracking URI), for code that also logs runs or downloads artifacts.
`connect` is what the registry commands use: when an MLflow server serves the store (the
tracking URI is `http(s)://`, or it is the local store and the server of `services up` answers),
it speaks MLflow's documented REST API (`/api/2.0/mlflow/...`) with `requests`, because
importing the `mlflow` package alone takes 3-4 s here and `model list|promote|rollback` must
answer within 2 s; with no server it falls back to `MlflowClient`. Neither imports torch or the
training code.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import requests

from skewless.mlflow_env import apply_offline_env
from skewless.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

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
PREDICTIONS_ARTIFACT = "test_predictions.parquet"
"""Each test fold's scores (`transaction_id`, `score`, `known_compromised`), in its run; the
registered fold's also in the version's own run."""
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


class ModelVersionLike(Protocol):
    @property
    def version(self) -> Any: ...
    @property
    def run_id(self) -> Any: ...
    @property
    def creation_timestamp(self) -> Any: ...


class RegisteredModelLike(Protocol):
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def aliases(self) -> Mapping[str, Any]: ...


class RunDataLike(Protocol):
    @property
    def metrics(self) -> Mapping[str, float]: ...


class RunLike(Protocol):
    @property
    def data(self) -> RunDataLike: ...


class RegistryClient(Protocol):
    """The part of `MlflowClient`'s API the registry functions use; `RestRegistry` has it too."""

    def get_registered_model(self, name: str) -> RegisteredModelLike: ...
    def get_model_version(self, name: str, version: str) -> ModelVersionLike: ...
    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersionLike: ...
    def search_model_versions(self, filter_string: str) -> Sequence[ModelVersionLike]: ...
    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None: ...
    def set_registered_model_tag(self, name: str, key: str, value: Any) -> None: ...
    def get_run(self, run_id: str) -> RunLike: ...


class RegistryApiError(RegistryError):
    """The MLflow server answered with an error (`error_code` as MLflow names it)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code


@dataclass(frozen=True)
class _Version:
    version: str
    run_id: str
    creation_timestamp: int


@dataclass(frozen=True)
class _Model:
    tags: dict[str, str]
    aliases: dict[str, str]


@dataclass(frozen=True)
class _RunData:
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Run:
    data: _RunData


class RestRegistry:
    """MLflow's model registry over the server's REST API 2.0, through `requests`."""

    TIMEOUT_S = 10.0

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def _call(self, method: str, endpoint: str, **payload: Any) -> dict[str, Any]:
        url = f"{self.base_url}/api/2.0/mlflow/{endpoint}"
        try:
            if method == "GET":
                response = self.session.get(url, params=payload, timeout=self.TIMEOUT_S)
            else:
                response = self.session.request(method, url, json=payload, timeout=self.TIMEOUT_S)
        except requests.RequestException as exc:
            raise RegistryError(
                f"the MLflow server at {self.base_url} does not answer ({type(exc).__name__}); "
                "start it (`make services-up`) or check SKEWLESS_MLFLOW_TRACKING_URI"
            ) from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        if not response.ok:
            code = str(body.get("error_code") or f"HTTP_{response.status_code}")
            raise RegistryApiError(code, str(body.get("message") or response.text[:200]))
        return body

    @staticmethod
    def _version(fields: dict[str, Any]) -> _Version:
        return _Version(
            version=str(fields["version"]),
            run_id=str(fields.get("run_id") or ""),
            creation_timestamp=int(fields.get("creation_timestamp") or 0),
        )

    def get_registered_model(self, name: str) -> _Model:
        model = self._call("GET", "registered-models/get", name=name)["registered_model"]
        return _Model(
            tags={t["key"]: t.get("value", "") for t in model.get("tags", [])},
            aliases={a["alias"]: str(a["version"]) for a in model.get("aliases", [])},
        )

    def get_model_version(self, name: str, version: str) -> _Version:
        body = self._call("GET", "model-versions/get", name=name, version=str(version))
        return self._version(body["model_version"])

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        body = self._call("GET", "registered-models/alias", name=name, alias=alias)
        return self._version(body["model_version"])

    def search_model_versions(self, filter_string: str) -> list[_Version]:
        versions: list[_Version] = []
        token = ""
        while True:
            page = self._call(
                "GET",
                "model-versions/search",
                filter=filter_string,
                max_results=1000,
                **({"page_token": token} if token else {}),
            )
            versions += [self._version(v) for v in page.get("model_versions", [])]
            token = page.get("next_page_token", "")
            if not token:
                return versions

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._call("POST", "registered-models/alias", name=name, alias=alias, version=str(version))

    def set_registered_model_tag(self, name: str, key: str, value: Any) -> None:
        self._call("POST", "registered-models/set-tag", name=name, key=key, value=str(value))

    def get_run(self, run_id: str) -> _Run:
        run = self._call("GET", "runs/get", run_id=run_id)["run"]
        metrics = {m["key"]: float(m["value"]) for m in run.get("data", {}).get("metrics", [])}
        return _Run(_RunData(metrics))


def client(settings: Settings) -> MlflowClient:
    """MLflow's own client on the settings' tracking URI (no experiment set up, nothing
    written); imports `mlflow` (3-4 s)."""
    from mlflow import MlflowClient

    apply_offline_env()
    return MlflowClient(tracking_uri=settings.tracking_uri)


def version_run(client: MlflowClient, name: str, version: str) -> Run:
    """The MLflow run that registered `version` of the model `name`."""
    return client.get_run(str(client.get_model_version(name, version).run_id))


SERVER_PROBE_S = 1.0


def server_url(settings: Settings) -> str | None:
    """The MLflow server that serves the settings' registry, or None if none answers.

    An `http(s)://` tracking URI is the server. Otherwise the local server of `services up`
    serves the store when the tracking URI is its backend store and its health check answers.
    """
    uri = settings.tracking_uri
    if uri.startswith(("http://", "https://")):
        return uri
    if uri != settings.mlflow_backend_uri:
        return None
    local = f"http://{settings.mlflow_host}:{settings.mlflow_port}"
    try:
        answered = requests.get(f"{local}/health", timeout=SERVER_PROBE_S).ok
    except requests.RequestException:
        return None
    return local if answered else None


def connect(settings: Settings) -> RegistryClient:
    """The quickest client of the settings' registry: REST when a server serves it, else
    `MlflowClient` (see the module docstring)."""
    url = server_url(settings)
    return RestRegistry(url) if url else client(settings)


NO_SUCH = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
"""MLflow's error codes for a version, alias or model that does not exist."""


def answered_no(exc: Exception) -> bool:
    """True if `exc` is the registry's answer "no such version, alias or model", not a fault
    on the way to it (MLflow's exceptions and `RegistryApiError` both carry `error_code`)."""
    return getattr(exc, "error_code", None) in NO_SUCH


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


def champion_version(client: RegistryClient, name: str) -> str | None:
    """The version the `champion` alias points at, or None."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except Exception as exc:
        if answered_no(exc):
            return None
        raise


def history(client: RegistryClient, name: str) -> list[ChampionMove]:
    """Every move of the champion, oldest first; the last one made the current champion."""
    tags = client.get_registered_model(name).tags
    return parse_history(tags)


def parse_history(tags: Mapping[str, str]) -> list[ChampionMove]:
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
    client: RegistryClient,
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


def promote(client: RegistryClient, name: str, version: str, action: str = PROMOTE) -> None:
    """Make `version` the champion and append the move to the history (`action`: who decided,
    the gate or a person)."""
    if action not in (GATE, PROMOTE):
        raise ValueError(f"a promotion is made by {GATE!r} or {PROMOTE!r}, not {action!r}")
    try:
        client.get_model_version(name, version)
    except Exception as exc:
        if answered_no(exc):
            raise RegistryError(f"{name} has no version {version}") from exc
        raise
    current = champion_version(client, name)
    if current == version:
        return
    client.set_registered_model_alias(name, CHAMPION, version)
    _record(client, name, history(client, name), action, current, version)
    logger.info("%s version %s is now %s (was %s)", name, version, CHAMPION, current)


def rollback(client: RegistryClient, name: str) -> str:
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


def list_versions(client: RegistryClient, name: str) -> list[VersionRow]:
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
