"""Settings: environment parsing, readable errors, masked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from skewless.services.java import java_major_version
from skewless.settings import SettingsError, load_settings, project_root


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
