"""The bridge to Feast: repository config from settings, the store, apply and plan.

`feature_store.yaml` holds the default registry and Redis address, so Feast's own CLI works
in the repository as it is. Our commands read the same file and put the effective settings
(registry, Redis address and password) over it, so one settings object drives our code and
Feast alike; the repository's source modules read the data folder from the settings too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from skewless.aggregation import LogRatio, StateTiles, TransactionHistory, WindowAggregation
from skewless.logs import prints_to_log
from skewless.settings import Settings, load_settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

logger = logging.getLogger(__name__)

OFFLINE_TABLES = "features"
MATERIALIZED_SINCE = datetime(1970, 1, 1, tzinfo=UTC)
"""Our materialization takes each entity's latest row of all history: its interval's start."""
EMPTY_PART = "part-00000-empty.parquet"


def redis_connection_string(settings: Settings) -> str:
    """Feast's Redis `connection_string` for the settings' address and password."""
    address = f"{settings.redis_host}:{settings.redis_port}"
    if settings.redis_password is None:
        return address
    return f"{address},password={settings.redis_password.get_secret_value()}"


def feast_environment(settings: Settings) -> dict[str, str]:
    """The variables a child process needs to see the same settings (and Spark on loopback)."""
    env = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in settings.as_env_lines()}
    if settings.redis_password:
        env["SKEWLESS_REDIS_PASSWORD"] = settings.redis_password.get_secret_value()
    env["SPARK_LOCAL_IP"] = "127.0.0.1"  # Spark binds loopback only
    return {name: value for name, value in env.items() if value}


def offline_table_path(settings: Settings, name: str) -> Path:
    """Folder of the offline feature table `name` (partitioned parquet)."""
    return settings.data_dir / OFFLINE_TABLES / name


def offline_table_uri(name: str) -> str:
    """URI of an offline feature table, for the repository's source declarations."""
    return offline_table_path(load_settings(), name).as_uri()


def offline_table_schema(declaration: WindowAggregation) -> pa.Schema:
    """Columns of the offline table of one declaration, in order."""
    fields = [
        pa.field(declaration.entity_key, pa.int64()),
        pa.field(declaration.event_time, pa.timestamp("us", tz="UTC")),
        pa.field(declaration.order_key, pa.int64()),
    ]
    counts = declaration.count_features
    for name in declaration.feature_names:
        fields.append(pa.field(name, pa.int64() if name in counts else pa.float64()))
    return pa.schema(fields)


def ensure_offline_tables(settings: Settings, declarations: tuple[WindowAggregation, ...]) -> None:
    """Give every offline table at least an empty file with its schema, so sources validate."""
    for declaration in declarations:
        folder = offline_table_path(settings, declaration.name)
        if folder.exists() and any(folder.rglob("*.parquet")):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        schema = offline_table_schema(declaration)
        pq.write_table(schema.empty_table(), folder / EMPTY_PART, coerce_timestamps="us")


def load_declarations(settings: Settings) -> tuple[WindowAggregation, ...]:
    """The aggregation declarations of the configured feature repository."""
    module = _load_repo_module(settings.feature_repo, "aggregations")
    declarations = getattr(module, "AGGREGATIONS", None)
    if not isinstance(declarations, tuple) or not all(
        isinstance(item, WindowAggregation) for item in declarations
    ):
        raise TypeError(f"{settings.feature_repo}/aggregations.py must define AGGREGATIONS")
    return declarations


def load_history(settings: Settings) -> TransactionHistory | None:
    """The transaction history declared next to the aggregations, if one is."""
    module = _load_repo_module(settings.feature_repo, "aggregations")
    found = [value for value in vars(module).values() if isinstance(value, TransactionHistory)]
    if len(found) > 1:
        names = ", ".join(history.name for history in found)
        raise TypeError(
            f"{settings.feature_repo}/aggregations.py declares several histories: {names}"
        )
    return found[0] if found else None


def load_log_ratios(settings: Settings) -> tuple[LogRatio, ...]:
    """The model inputs derived from two features (`LOG_RATIOS`) declared next to the
    aggregations; none if the repository declares none."""
    ratios = getattr(_load_repo_module(settings.feature_repo, "aggregations"), "LOG_RATIOS", ())
    if not isinstance(ratios, tuple) or not all(isinstance(r, LogRatio) for r in ratios):
        raise TypeError(f"{settings.feature_repo}/aggregations.py: LOG_RATIOS is no LogRatio tuple")
    if len({ratio.name for ratio in ratios}) != len(ratios):
        raise ValueError(f"{settings.feature_repo}/aggregations.py: LOG_RATIOS repeats a name")
    return ratios


def load_state_tiles(settings: Settings) -> StateTiles:
    """The streaming state's tiles declared next to the aggregations (defaults if none)."""
    tiles = getattr(_load_repo_module(settings.feature_repo, "aggregations"), "STATE_TILES", None)
    if tiles is None:
        return StateTiles()
    if not isinstance(tiles, StateTiles):
        raise TypeError(f"{settings.feature_repo}/aggregations.py: STATE_TILES is no StateTiles")
    return tiles


def _load_repo_module(repo: Path, name: str) -> ModuleType:
    qualified = f"skewless_feature_repo.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, repo / f"{name}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{repo / name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


def export_environment(settings: Settings) -> None:
    """Put the Feast variables of `settings` into this process's environment."""
    os.environ.update(feast_environment(settings))


def spark_conf(settings: Settings) -> dict[str, str]:
    """The offline store's `spark_conf` from `feature_store.yaml`, read without importing Feast."""
    import yaml

    text = os.path.expandvars((settings.feature_repo / "feature_store.yaml").read_text())
    conf = (yaml.safe_load(text).get("offline_store") or {}).get("spark_conf") or {}
    return {str(key): str(value) for key, value in conf.items()}


def repo_config(settings: Settings) -> RepoConfig:
    """Feast's config for the repository, read from its yaml with the settings put over it."""
    from feast.repo_config import load_repo_config

    export_environment(settings)
    config = load_repo_config(settings.feature_repo, settings.feature_repo / "feature_store.yaml")
    location = settings.feast_registry_location
    if "://" in location and not location.startswith("file://"):
        config.registry_config = {"registry_type": "sql", "path": location}
    else:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        config.registry_config = {"registry_type": "file", "path": location}
    config.online_config = {
        **config.online_config,
        "connection_string": redis_connection_string(settings),
        "redis_type": "redis_cluster" if settings.redis_cluster else "redis",
    }
    return config


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for the repository in `settings`."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings))


def _on_import_path(repo: Path) -> None:
    """Make the repository's modules importable by their plain names, as `feast` does.

    Modules imported earlier for another settings object are dropped, so their source
    paths are computed again from the current environment.
    """
    if str(repo) not in sys.path:
        sys.path.append(str(repo))
    for module_file in repo.glob("*.py"):
        sys.modules.pop(module_file.stem, None)


def _run_repo_operation(
    settings: Settings, operation: Callable[[RepoConfig, Path, bool], None]
) -> None:
    """Run a Feast repository operation (apply, plan) the way Feast's CLI does.

    The offline tables get their schema first so source validation reads real files; Feast
    changes the working directory, which is restored afterwards.
    """
    ensure_offline_tables(settings, load_declarations(settings))
    _on_import_path(settings.feature_repo)
    cwd = Path.cwd()
    try:
        operation(repo_config(settings), settings.feature_repo, False)
    finally:
        os.chdir(cwd)


def apply(settings: Settings) -> None:
    """`feast apply` with the settings: register every declaration, create online tables."""
    from feast.repo_operations import apply_total

    with prints_to_log("feast"):
        _run_repo_operation(settings, apply_total)


def plan(settings: Settings) -> None:
    """`feast plan` with the settings: parse, validate sources, print the diff."""
    from feast.repo_operations import plan as feast_plan

    _run_repo_operation(settings, feast_plan)


def record_materialization(
    settings: Settings, declarations: tuple[WindowAggregation, ...], until: datetime
) -> None:
    """Tell the registry that the window views hold every row before `until`, as Feast's own
    materialization does, so `feast materialize-incremental` carries on from there instead of
    from its TTL (one second for window rows, i.e. nothing).

    A view the registry does not know yet (no apply so far) is left out with a warning.
    """
    from feast.errors import FeatureViewNotFoundException

    store = open_store(settings)
    for declaration in declarations:
        try:
            view = store.get_feature_view(declaration.name)
        except FeatureViewNotFoundException:
            logger.warning("%s is not registered: run `skewless apply`", declaration.name)
            continue
        store.registry.apply_materialization(view, store.project, MATERIALIZED_SINCE, until)
