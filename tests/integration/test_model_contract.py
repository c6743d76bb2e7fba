"""The model/feature contract: serving refuses a model whose features it cannot compute."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

import pytest

from serving.champion import ChampionWatcher, load_version
from serving.scoring import ModelContractError, ScoringCore, build_core, computable_features
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


def test_a_core_started_on_a_state_never_loaded_says_which_values_start_empty(
    trained_platform: TrainedPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """Windows of a state not loaded in this layout start empty: the start-up log names each
    declaration, and nothing for the platform's state, loaded by its training."""
    names = {decl.name for decl in load_declarations(trained_platform.settings)}
    for prefix, expected in ((f"test:{uuid.uuid4().hex}", names), (None, set())):
        settings = private_settings(
            trained_platform, **({"stream_state_prefix": prefix} if prefix else {})
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="serving.scoring"):
            core = build_core(settings)
        core.watcher.stop()
        said = [r.getMessage() for r in caplog.records if r.name == "serving.scoring"]
        told = {name for name in names for line in said if f"the state of {name} " in line}
        assert told == expected, said
        assert all("skewless materialize" in line for line in said), said
