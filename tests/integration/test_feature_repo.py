"""The Feast repository: plan and apply against the real Spark offline store and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from skewless import feature_store
from skewless.settings import Settings, load_settings
from skewless.transaction_features import TRANSACTION_FEATURES

pytestmark = pytest.mark.integration


@pytest.fixture
def repo_settings(redis_service: Settings, tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        runtime_dir=redis_service.runtime_dir,
        redis_port=redis_service.redis_port,
    )


def test_feast_plan_accepts_the_repository(
    repo_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    feature_store.plan(repo_settings)
    out = capsys.readouterr().out
    assert "Created feature service fraud_model_v1" in out
    assert "Created on demand feature view transaction_features" in out


def test_apply_registers_fraud_model_v1_with_15_features(repo_settings: Settings) -> None:
    feature_store.apply(repo_settings)
    store = feature_store.open_store(repo_settings)
    service = store.get_feature_service("fraud_model_v1")
    names = [
        feature.name
        for projection in service.feature_view_projections
        for feature in projection.features
    ]
    declared = [
        name
        for declaration in feature_store.load_declarations(repo_settings)
        for name in declaration.feature_names
    ]
    assert sorted(names) == sorted([*TRANSACTION_FEATURES, *declared])
    assert len(names) == 23
    push_sources = {source.name for source in store.list_data_sources() if "push" in source.name}
    assert push_sources == {"customer_spending_push", "terminal_risk_push"}
