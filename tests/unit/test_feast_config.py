"""feature_store.yaml: its defaults are the settings' defaults, and our settings go over it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from feast.repo_config import load_repo_config

from skewless.feature_store import redis_connection_string, repo_config
from skewless.settings import ENV_PREFIX, load_settings

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "feature_repo"


@pytest.fixture
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SKEWLESS_* variable, working directory at the project root; restored afterwards."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.usefixtures("plain_environment")
def test_the_yaml_names_the_default_registry_and_redis() -> None:
    settings = load_settings()
    as_feast_reads_it = load_repo_config(REPO, REPO / "feature_store.yaml")
    registry = Path(as_feast_reads_it.registry.path)
    assert not registry.is_absolute()  # Feast resolves it against the repository
    assert (REPO / registry).resolve() == Path(settings.feast_registry_location)
    assert as_feast_reads_it.online_store.connection_string == redis_connection_string(settings)
    assert "${" not in (REPO / "feature_store.yaml").read_text()


@pytest.mark.usefixtures("plain_environment")
def test_settings_replace_the_yaml_registry_and_redis(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data", redis_host="127.0.0.2", redis_port=7001, redis_password="s3"
    )
    config = repo_config(settings)
    assert config.registry.path == str(tmp_path / "data" / "feast" / "registry.db")
    assert config.online_store.connection_string == "127.0.0.2:7001,password=s3"
    assert config.online_store.redis_type == "redis"
    clustered = repo_config(load_settings(data_dir=tmp_path / "data", redis_cluster=True))
    assert clustered.online_store.redis_type == "redis_cluster"
    assert os.environ["SKEWLESS_DATA_DIR"] == str(tmp_path / "data")  # for the repo's modules
    sql = load_settings(feast_registry="postgresql://registry@127.0.0.1/feast")
    assert repo_config(sql).registry.registry_type == "sql"
