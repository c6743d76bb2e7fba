"""Streaming state in real Redis against the pure reference, starting from a point in time."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from skewless.feature_store import load_declarations
from skewless.reference import feature_frame
from skewless.services import redis_server
from skewless.settings import Settings
from skewless.simulator import SimulationParams, simulate
from skewless.stream_state import StreamState
from tests.integration.test_state_tiles import _assert_matches

pytestmark = pytest.mark.integration


def test_stream_from_t_matches_reference_for_every_feature(state_redis: Settings) -> None:
    raw = simulate(
        SimulationParams(n_customers=150, n_terminals=300, n_days=75, start_date=date(2026, 4, 1))
    ).transactions
    declarations = load_declarations(state_redis)
    expected = feature_frame(raw, declarations)
    start = pd.Timestamp(datetime(2026, 5, 20, tzinfo=UTC))
    delay = pd.Timedelta(days=7)

    prefix = f"test:{uuid.uuid4().hex}"  # a private key space per test run
    state = StreamState(redis_server.client(state_redis), declarations, prefix)
    state.initialize(raw, start.to_pydatetime(), label_delay_days=7)

    stream = raw[raw["tx_datetime"] >= start]
    labels = raw[raw["tx_datetime"] + delay >= start].assign(
        label_time=lambda f: f["tx_datetime"] + delay
    )
    rng = np.random.default_rng(0)
    got = []
    position = 0
    while position < len(stream):
        size = int(rng.integers(1, 400))
        batch = stream.iloc[position : position + size]
        position += size
        due = labels[labels["label_time"] <= batch["tx_datetime"].max()]
        labels = labels.drop(due.index)
        assert state.add_labels(due) == len(due)
        features = state.score_features(batch)
        got.append(
            pd.DataFrame(
                np.hstack([features[d.name] for d in declarations]),
                columns=[n for d in declarations for n in d.feature_names],
                index=batch.index,
            )
        )
    streamed = pd.concat(got)
    assert len(streamed) == len(stream) > 1000
    _assert_matches(streamed, expected)
    # Scoring the same batch again (at-least-once redelivery) gives the same features.
    again = state.score_features(stream.iloc[-50:])
    np.testing.assert_allclose(
        np.hstack([again[d.name] for d in declarations]), streamed.iloc[-50:].to_numpy()
    )
