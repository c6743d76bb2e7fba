"""Feast's own CLI and web UI in the feature repository, as a Feast user runs them.

Each test works in a copy of the project's `feature_repo/` inside a fresh git repository, with
no `SKEWLESS_*` variable in the environment: Feast reads `feature_store.yaml` as it is. Only
the Redis port of the copy is pointed at the session's private Redis, as a user would edit it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from google.protobuf.json_format import MessageToDict

from skewless.feature_store import load_declarations, record_materialization
from skewless.services.process import ManagedProcess, wait_for
from skewless.settings import ENV_PREFIX, Settings, load_settings
from skewless.transaction_features import TRANSACTION_FEATURES
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FEAST = str(Path(sys.executable).parent / "feast")
SKEWLESS = str(Path(sys.executable).parent / "skewless")
ARTIFACTS = ROOT / "test-artifacts"
VOLATILE_KEYS = {"meta", "createdTimestamp", "lastUpdatedTimestamp", "dataSourceClassType"}
"""Registry fields that say nothing about the declarations: timestamps of every apply, and the
class name Feast writes into a view's embedded sources when it creates the view but not when
it updates it, whichever tool applies."""


@dataclass(frozen=True)
class FeastProject:
    """A copy of the project's feature repository in a git repository of its own."""

    root: Path
    env: dict[str, str]
    redis_port: int

    @property
    def repo(self) -> Path:
        return self.root / "feature_repo"

    @property
    def registry(self) -> Path:
        return self.root / "data" / "feast" / "registry.db"

    def run(self, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """Run a command, fail the test with its output if it fails; returns its output."""
        done = subprocess.run(
            argv,
            check=False,
            cwd=cwd or self.repo,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
        assert "Traceback" not in output, output
        return output

    def git_status(self) -> str:
        return self.run("git", "status", "--porcelain", "--untracked-files=all", cwd=self.root)


def _user_environment() -> dict[str, str]:
    """This process's environment without the settings the session exported."""
    return {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}


@pytest.fixture(scope="module")
def feast_project(
    redis_service: Settings, tmp_path_factory: pytest.TempPathFactory
) -> FeastProject:
    root = tmp_path_factory.mktemp("feast-project")
    shutil.copytree(
        ROOT / "feature_repo",
        root / "feature_repo",
        ignore=shutil.ignore_patterns("data", "__pycache__"),
    )
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    config = root / "feature_repo" / "feature_store.yaml"
    text = config.read_text()
    assert '"127.0.0.1:6379"' in text  # the default the settings name too
    config.write_text(text.replace("127.0.0.1:6379", f"127.0.0.1:{redis_service.redis_port}"))
    project = FeastProject(root, _user_environment(), redis_service.redis_port)
    project.run("git", "init", "--quiet", cwd=root)
    project.run("git", "add", ".", cwd=root)
    project.run(
        "git", "-c", "user.name=test", "-c", "user.email=test@localhost",
        "commit", "--quiet", "-m", "feature repository", cwd=root,
    )  # fmt: skip
    # What `make apply` (and so `make demo`) leaves: offline tables with their schema, registry.
    ours = {**project.env, "SKEWLESS_REDIS_PORT": str(project.redis_port)}
    project.run(SKEWLESS, "apply", cwd=root, env=ours)
    return project


def _registry_objects(path: Path) -> dict[str, Any]:
    """The registry's objects by kind and name, without their timestamps."""
    registry = RegistryProto()
    registry.ParseFromString(path.read_bytes())

    def stable(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: stable(v) for k, v in value.items() if k not in VOLATILE_KEYS}
        if isinstance(value, list):
            return [stable(item) for item in value]
        return value

    kinds = (
        "entities",
        "data_sources",
        "feature_views",
        "on_demand_feature_views",
        "feature_services",
    )
    objects: dict[str, Any] = {}
    for kind in kinds:
        specs = [getattr(item, "spec", item) for item in getattr(registry, kind)]  # sources: none
        objects[kind] = {spec.name: stable(MessageToDict(spec)) for spec in specs}
    return objects


def test_feast_cli_and_skewless_apply_share_one_registry(feast_project: FeastProject) -> None:
    project = feast_project
    ours = _registry_objects(project.registry)  # as `skewless apply` registered it
    assert set(ours["feature_services"]) == {"fraud_model_v1"}
    assert set(ours["feature_views"]) == {"customer_spending", "terminal_risk"}
    assert set(ours["on_demand_feature_views"]) == {"transaction_features"}
    sources = {source["name"]: source for source in ours["data_sources"].values()}
    table = sources["customer_spending_table"]["sparkOptions"]["path"]
    assert table == (project.root / "data" / "features" / "customer_spending").as_uri()
    assert project.git_status() == ""

    plan = project.run(FEAST, "plan")
    assert "Created" not in plan  # nothing new: Feast sees what skewless registered
    assert project.git_status() == ""

    project.run(FEAST, "apply")
    assert _registry_objects(project.registry) == ours
    project.run(FEAST, "-c", "feature_repo", "apply", cwd=project.root)
    assert _registry_objects(project.registry) == ours
    assert [p.relative_to(project.root) for p in project.root.rglob("registry.db")] == [
        Path("data/feast/registry.db")
    ]
    assert project.git_status() == ""

    views = project.run(FEAST, "feature-views", "list")
    for name in ("customer_spending", "terminal_risk", "transaction_features"):
        assert re.search(rf"^{name}\s", views, re.MULTILINE), views
    services = project.run(
        FEAST, "-c", "feature_repo", "feature-services", "list", cwd=project.root
    )
    assert "fraud_model_v1" in services
    assert not [p for p in project.root.rglob("*") if "${" in p.name]
    assert project.git_status() == ""

    # Our materialization records its interval, so Feast's incremental one carries on from it.
    settings = load_settings(
        data_dir=project.root / "data",
        feature_repo=project.repo,
        runtime_dir=project.root / ".runtime",
        redis_port=project.redis_port,
    )
    assert Path(settings.feast_registry_location) == project.registry
    until = datetime(2026, 6, 1, tzinfo=UTC)
    session_env = dict(os.environ)
    try:
        record_materialization(settings, load_declarations(settings), until)
    finally:  # opening the store exports this project's settings; the session's come back
        os.environ.clear()
        os.environ.update(session_env)
    incremental = project.run(FEAST, "materialize-incremental", "2026-06-02T00:00:00")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", incremental)
    for view in ("customer_spending", "terminal_risk"):
        assert f"{view} from 2026-06-01 00:00:00+00:00 to 2026-06-02 00:00:00+00:00" in plain
    assert project.git_status() == ""


def _browser(profile: Path) -> list[str]:
    return [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
    ]  # fmt: skip


def _page_text(browser: list[str], url: str) -> str:
    """The text of `url` once its scripts have run, as a reader sees it."""
    dom = subprocess.run(
        [*browser, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    body = re.sub(r"<style.*?</style>|<script.*?</script>", " ", dom, flags=re.DOTALL)
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


@pytest.fixture
def feast_ui(feast_project: FeastProject) -> Iterator[str]:
    """`feast ui` of the project on a free loopback port, stopped with its process group."""
    feast_project.run(FEAST, "apply")
    port = free_port()
    server = ManagedProcess("feast-ui", feast_project.root / ".runtime")
    server.start(
        [FEAST, "ui", "--host", "127.0.0.1", "--port", str(port)],
        env=feast_project.env,
        cwd=feast_project.repo,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/projects", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    try:
        assert wait_for(answers, 120, interval_s=0.5), server.log_tail()
        yield url
    finally:
        server.stop()


def test_feast_ui_shows_the_feature_service(
    feast_project: FeastProject, feast_ui: str, tmp_path: Path
) -> None:
    browser = _browser(tmp_path / "profile")
    page = f"{feast_ui}/p/skewless/feature-service/fraud_model_v1"
    text = _page_text(browser, page)
    assert "Feature Service: fraud_model_v1" in text, text[-2000:]
    settings = load_settings(feature_repo=feast_project.repo)
    served = [
        *(("transaction_features", name) for name in TRANSACTION_FEATURES),
        *((d.name, name) for d in load_declarations(settings) for name in d.feature_names),
    ]
    assert len(served) == 23
    for view, feature in served:  # one table row each: view, feature, value type
        assert re.search(rf"\b{view}\W+{feature}\W+(DOUBLE|INT64)\b", text), feature

    views = _page_text(browser, f"{feast_ui}/p/skewless/feature-view")
    for name in ("customer_spending", "terminal_risk", "transaction_features"):
        assert name in views, views[-2000:]
    entities = _page_text(browser, f"{feast_ui}/p/skewless/entity")
    assert "customer" in entities and "terminal" in entities

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "feast-ui-feature-service.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1400,1200", page],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000
    assert feast_project.git_status() == ""
