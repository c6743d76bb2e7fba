"""A sequence model trained by the pipeline and served by the real worker: the history it reads
online is the offline one for every transaction, first transactions of a card included."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from monitoring.monitor import check_skew
from monitoring.skew import SkewTolerance
from skewless import feature_store, model_runtime, offline_store
from skewless.history import offline_history
from skewless.spark import spark_session
from tests.conftest import TrainedPlatform, private_settings
from tests.integration.test_worker import _serve_replay
from training.model import TrainingParams
from training.pipeline import TrainOptions, materialize_with_progress, run_training

pytestmark = pytest.mark.integration


def test_a_sequence_champion_reads_the_offline_history_online(
    trained_platform: TrainedPlatform,
) -> None:
    """Train a sequence model with `skewless train`'s pipeline (its own registered model, so
    it is champion), load the state as of the data's first instant (every card's first
    transactions come in the replay, their histories padded), replay two days and compare
    what the worker read and scored with the offline history and the offline score."""
    run = uuid.uuid4().hex[:6]
    settings = private_settings(
        trained_platform, model_name=f"sequence-{run}", stream_state_prefix=f"sequence-{run}"
    )
    params = replace(TrainingParams(), hidden_sizes=(16,), history_units=8, max_epochs=2)
    summary = run_training(
        settings, TrainOptions(data=trained_platform.data, params=params, materialize=False)
    )
    assert summary.alias == "champion"
    tx = trained_platform.transactions
    start = tx["tx_datetime"].min().floor("D")
    materialize_with_progress(
        spark_session(settings), settings, trained_platform.data, until=start.to_pydatetime()
    )
    end = start + timedelta(days=2)
    expected = tx[tx["tx_datetime"] < end]
    logged = _serve_replay(settings, trained_platform.data, start, end, len(expected))
    served = pd.DataFrame(
        [{"transaction_id": row["transaction_id"], "score": row["score"], **row["features"]}
         for row in logged]
    ).drop_duplicates("transaction_id").set_index("transaction_id")  # fmt: skip
    history = feature_store.load_history(settings)
    assert history is not None
    columns = list(history.column_names)
    vectors = offline_store.transaction_vectors(
        settings, tx, feature_store.load_declarations(settings)
    )
    offline = offline_history(vectors, history, wanted=expected["transaction_id"])
    assert set(served.index) == set(offline.index)
    online = served.loc[offline.index, columns].astype(np.float64)
    np.testing.assert_array_equal(online.to_numpy(), offline.to_numpy())  # NaN == NaN here
    padded = offline[history.step_columns(history.length)[-1]].isna()
    assert padded.mean() > 0.3 and offline[columns[-1]].notna().any()  # first transactions
    model = model_runtime.load_model(settings, summary.version)
    features = vectors.set_index("transaction_id").loc[offline.index].join(offline)
    matrix = features[list(model.feature_names)].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(served.loc[offline.index, "score"], model.score(matrix), atol=1e-6)
    frame = pd.DataFrame(
        [{"model_version": summary.version, **{k: row[k] for k in
          ("transaction_id", "customer_id", "terminal_id")},
          "tx_datetime": pd.Timestamp(row["tx_datetime"]), **row["features"]} for row in logged]
    )  # fmt: skip
    reference = model_runtime.reference_statistics(settings, summary.version)
    report = check_skew(settings, frame, reference, SkewTolerance())
    assert {skew.name for skew in report} >= set(columns)
    assert [(s.name, s.mismatch_rate) for s in report if s.mismatch_rate] == []
