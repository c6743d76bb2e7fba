"""The scoring core shared by both front doors (Kafka worker and HTTP enricher).

A batch of transactions goes in; the window features come from the streaming state (one
Redis round trip), the per-transaction features from the same function the on-demand view
uses, the scores from one call of the champion's ONNX graph (which fills missing values with
the defaults fitted in training). The latest values are also written back in Feast's online
format, so `get_online_features` sees stream-fresh features.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from serving.champion import ChampionWatcher, LoadedModel
from serving.state import StreamState, to_micros
from skewless.online_store import OnlineView
from skewless.settings import Settings
from skewless.transaction_features import transaction_features

logger = logging.getLogger(__name__)

PROJECT = "skewless"


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of a batch, the exact feature vectors used, and how long each step took."""

    transactions: pd.DataFrame
    features: pd.DataFrame
    scores: np.ndarray
    defaulted: pd.DataFrame
    """True where a feature was missing and the model's fitted default was used."""
    degraded: np.ndarray
    """True where the event was scored without its window features (lag fallback)."""
    model: LoadedModel
    feature_seconds: float
    model_seconds: float


class ScoringCore:
    """Features + champion model for batches of transactions."""

    def __init__(
        self, state: StreamState, watcher: ChampionWatcher, write_online: bool = True
    ) -> None:
        self.state = state
        self.watcher = watcher
        self.write_online = write_online
        self.views = {
            agg.declaration.name: OnlineView.of(PROJECT, agg.declaration)
            for agg in state.aggregations
        }

    @property
    def model(self) -> LoadedModel:
        return self.watcher.current

    def score(self, transactions: pd.DataFrame, degraded: np.ndarray | None = None) -> ScoredBatch:
        """Score a batch (canonical columns without the label), in the order given.

        Rows flagged `degraded` still update the state but are scored without their window
        features (the model's defaults stand in), which skips no work in the state but lets
        the caller mark them.
        """
        model = self.model
        degraded = np.zeros(len(transactions), bool) if degraded is None else degraded
        started = time.perf_counter()
        windows = self.state.score_features(transactions)
        columns: dict[str, np.ndarray] = {
            str(name): values.to_numpy(dtype=np.float64)
            for name, values in transaction_features(transactions).items()
        }
        for agg in self.state.aggregations:
            matrix = windows[agg.declaration.name]
            for index, name in enumerate(agg.declaration.feature_names):
                columns[name] = np.where(degraded, np.nan, matrix[:, index])
        features = pd.DataFrame(
            {
                name: columns.get(name, np.full(len(transactions), np.nan))
                for name in model.feature_names
            },
            index=transactions.index,
        )
        if self.write_online:
            self._write_online(transactions, windows)
        feature_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scores = model.score(features.to_numpy(dtype=np.float32))
        model_seconds = time.perf_counter() - started
        return ScoredBatch(
            transactions=transactions,
            features=features,
            scores=scores,
            defaulted=features.isna(),
            degraded=degraded,
            model=model,
            feature_seconds=feature_seconds,
            model_seconds=model_seconds,
        )

    def _write_online(self, transactions: pd.DataFrame, windows: dict[str, np.ndarray]) -> None:
        """The last event of each entity in the batch becomes its online feature row."""
        for agg in self.state.aggregations:
            decl = agg.declaration
            keys = transactions[decl.entity_key].to_numpy(np.int64)
            last = pd.Series(np.arange(len(keys))).groupby(keys).max().to_numpy()
            self.views[decl.name].write_micros(
                self.state.client,
                keys[last].tolist(),
                windows[decl.name][last],
                to_micros(transactions[decl.event_time])[last].tolist(),
            )


def build_core(settings: Settings) -> ScoringCore:
    """State, champion model (loaded with retries, watched for alias moves) and core."""
    from serving.champion import load_with_retry
    from skewless.feature_store import load_declarations
    from skewless.services import redis_server

    state = StreamState(
        redis_server.client(settings), load_declarations(settings), settings.stream_state_prefix
    )
    model = load_with_retry(settings, deadline_s=settings.service_start_timeout_s)
    watcher = ChampionWatcher(settings, model, settings.champion_poll_s).start()
    return ScoringCore(state, watcher)
