"""Settings: environment parsing, readable errors, masked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from skewless.services.java import java_major_version
from skewless.settings import SettingsError, load_settings, mask_url_password, project_root
from skewless_cli.cli import app


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_KAFKA_PORT", "19092")
    monkeypatch.setenv("SKEWLESS_TOPIC_SCORES", "scores-v2")
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert "scores-v2" in settings.topics


def test_non_numeric_port_names_variable_and_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "six-three-seven-nine")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "SKEWLESS_REDIS_PORT" in message
    assert "valid integer" in message
    assert "six-three-seven-nine" in message


def test_out_of_range_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_MLFLOW_PORT", "70000")
    with pytest.raises(SettingsError, match="SKEWLESS_MLFLOW_PORT"):
        load_settings()


def test_delivery_is_at_least_once_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().delivery == "at_least_once"
    monkeypatch.setenv("SKEWLESS_DELIVERY", "exactly_once")
    assert load_settings().delivery == "exactly_once"


def test_unknown_delivery_names_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SKEWLESS_DELIVERY", "exactly-once")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "SKEWLESS_DELIVERY" in message
    assert "'at_least_once' or 'exactly_once'" in message
    assert "exactly-once" in message


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.kafka_port = 1


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", "hunter2")
    lines = load_settings().as_env_lines()
    assert "SKEWLESS_REDIS_PASSWORD=**********" in lines
    assert not any("hunter2" in line for line in lines)
    assert any(line.startswith("SKEWLESS_KAFKA_BOOTSTRAP") for line in lines) is False


def test_every_setting_is_listed() -> None:
    settings = load_settings()
    names = {line.split("=", 1)[0] for line in settings.as_env_lines()}
    assert names == {f"SKEWLESS_{name.upper()}" for name in type(settings).model_fields}


def test_effective_lines_show_derived_defaults(tmp_path: Path) -> None:
    settings = load_settings(runtime_dir=tmp_path / "rt", data_dir=tmp_path / "data")
    effective = settings.effective_env_lines()
    assert f"SKEWLESS_MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/rt/mlflow/mlflow.db" in effective
    assert f"SKEWLESS_FEAST_REGISTRY={tmp_path}/data/feast/registry.db" in effective
    # The raw lines keep unset settings empty: Feast's environment relies on it.
    assert "SKEWLESS_MLFLOW_TRACKING_URI=" in settings.as_env_lines()
    assert "SKEWLESS_FEAST_REGISTRY=" in settings.as_env_lines()
    assert [line.split("=", 1)[0] for line in effective] == [
        line.split("=", 1)[0] for line in settings.as_env_lines()
    ]


def test_effective_lines_keep_given_values_and_mask_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", "hunter2")
    monkeypatch.setenv("SKEWLESS_MLFLOW_TRACKING_URI", "http://ops:s3cret@127.0.0.1:5000")
    monkeypatch.setenv("SKEWLESS_FEAST_REGISTRY", "postgresql://feast:pw@db/registry")
    effective = load_settings().effective_env_lines()
    assert "SKEWLESS_REDIS_PASSWORD=**********" in effective
    assert "SKEWLESS_MLFLOW_TRACKING_URI=http://ops:**********@127.0.0.1:5000" in effective
    assert "SKEWLESS_FEAST_REGISTRY=postgresql://feast:**********@db/registry" in effective
    assert not any("hunter2" in line or "s3cret" in line for line in effective)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("http://user@host/x", "http://user@host/x"),
        ("redis://:pw@host:6379", "redis://:**********@host:6379"),
    ],
)
def test_mask_url_password(text: str, masked: str) -> None:
    assert mask_url_password(text) == masked


def test_config_show_prints_effective_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKEWLESS_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setenv("SKEWLESS_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"SKEWLESS_MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/rt/mlflow/mlflow.db" in lines
    assert f"SKEWLESS_FEAST_REGISTRY={tmp_path}/data/feast/registry.db" in lines


def test_serve_with_an_unknown_delivery_stops_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SKEWLESS_DELIVERY", "twice")
    result = CliRunner().invoke(app, ["serve", "--max-events", "1"])
    assert result.exit_code == 2
    assert "SKEWLESS_DELIVERY" in result.output
    assert "'at_least_once' or 'exactly_once'" in result.output


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("no version here", None),
    ],
)
def test_java_major_version(text: str, major: int | None) -> None:
    assert java_major_version(text) == major


def test_readme_lists_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [
        f"SKEWLESS_{name.upper()}"
        for name in load_settings().model_fields
        if f"`SKEWLESS_{name.upper()}`" not in readme
    ]
    assert not missing, f"README.md does not list {missing}"


def test_relative_folders_resolve_against_the_project_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "project" / "feature_repo"
    repo.mkdir(parents=True)
    (repo / "feature_store.yaml").write_text("project: p\n")
    for name in ("DATA_DIR", "RUNTIME_DIR", "FEATURE_REPO"):
        monkeypatch.delenv(f"SKEWLESS_{name}", raising=False)
    monkeypatch.chdir(repo)  # where Feast's CLI runs the repository's modules
    inside = load_settings()
    assert project_root() == tmp_path / "project"
    assert inside.data_dir == tmp_path / "project" / "data"
    assert inside.feature_repo == repo
    monkeypatch.chdir(tmp_path / "project")
    assert load_settings() == inside
    monkeypatch.chdir(tmp_path)  # no project above: the working directory, as before
    assert load_settings().data_dir == tmp_path / "data"
