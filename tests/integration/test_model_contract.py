"""The model/feature contract: serving refuses a model whose features it cannot compute."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from serving.champion import ChampionWatcher, load_version
from serving.scoring import ModelContractError, ScoringCore, computable_features
from skewless.feature_store import load_declarations
from skewless.services import redis_server
from skewless.stream_state import StreamState
from tests.conftest import TrainedPlatform, private_settings

pytestmark = pytest.mark.integration

UNDECLARED = "customer_nb_tx_90day_window"


def test_a_model_needing_an_undeclared_feature_is_refused_at_start_and_never_swapped_in(
    trained_platform: TrainedPlatform,
) -> None:
    settings = private_settings(trained_platform, stream_state_prefix=f"test:{uuid.uuid4().hex}")
    state = StreamState(
        redis_server.client(settings), load_declarations(settings), settings.stream_state_prefix
    )
    champion = load_version(settings)
    assert set(champion.feature_names) <= set(computable_features(state))
    foreign = replace(
        champion, version="99", feature_names=(*champion.feature_names[1:], UNDECLARED)
    )

    with pytest.raises(ModelContractError, match=f"version 99 .* needs {UNDECLARED}, which"):
        ScoringCore(state, ChampionWatcher(settings, foreign, 0))

    core = ScoringCore(state, ChampionWatcher(settings, champion, 0))
    with pytest.raises(ModelContractError, match=UNDECLARED):
        core.watcher.swap(foreign)
    assert core.model.version == champion.version  # the champion in use stays
    assert core.watcher.refused == "99"  # and the refused version is not loaded again
    assert core.watcher.check_once() is False
