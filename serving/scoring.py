"""The scoring core shared by both front doors (Kafka worker and HTTP enricher).

A batch of transactions goes in; the window features come from the streaming state (one
Redis round trip), the per-transaction features from the same formula the on-demand view
uses, the declared transaction history from a second round trip that also stores the batch's
vectors (`skewless.history`), the scores from one call of the champion's ONNX graph (which
fills missing values with the defaults fitted in training). `write_online` then writes the
latest values back in Feast's online format, so `get_online_features` sees stream-fresh
features.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
import redis

from serving.champion import ChampionWatcher
from skewless import redis_batch
from skewless.aggregation import TransactionHistory
from skewless.history import HistoryState, prefix_beside
from skewless.model_runtime import LoadedModel
from skewless.online_store import OnlineView
from skewless.redis_batch import Command
from skewless.settings import Settings
from skewless.stream_state import Columns, StreamState, as_columns
from skewless.transaction_features import TRANSACTION_FEATURES, transaction_feature_arrays

logger = logging.getLogger(__name__)

PROJECT = "skewless"


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of a batch, the exact feature vectors used, and how long each step took."""

    transactions: Columns
    """The batch's transactions, one array per canonical column (times in microseconds)."""
    windows: dict[str, np.ndarray]
    """Each window declaration's features of every transaction, as the state computed them."""
    features: np.ndarray
    """One row per transaction, the model's columns; NaN where the model's default was used."""
    scores: np.ndarray
    degraded: np.ndarray
    """True where the event was scored without its window features (lag fallback)."""
    model: LoadedModel
    feature_seconds: float
    model_seconds: float

    @property
    def feature_names(self) -> list[str]:
        """The columns of `features`: the serving model's features, in its order."""
        return list(self.model.feature_names)

    @property
    def defaulted(self) -> np.ndarray:
        """True where a feature was missing and the model's fitted default was used."""
        return np.isnan(self.features)

    def __len__(self) -> int:
        return len(self.scores)


class ModelContractError(RuntimeError):
    """A model needs features the serving code cannot compute."""


def computable_features(state: StreamState, history: HistoryState | None = None) -> tuple[str, ...]:
    """Every feature the core computes: the per-transaction ones, each window's and, with a
    declared history, its columns."""
    names = list(TRANSACTION_FEATURES)
    for agg in state.aggregations:
        names += agg.declaration.feature_names
    return (*names, *(history.history.column_names if history else ()))


def history_state(
    state: StreamState, history: TransactionHistory | None, state_prefix: str
) -> HistoryState | None:
    """The state of the declared history (None without one), next to the window state's keys
    (`state_prefix`).

    Raises `ModelContractError` when the history's vectors hold features the core does not
    compute (a declaration error: the vectors would be NaN forever)."""
    if history is None:
        return None
    unknown = sorted(set(history.features) - set(computable_features(state)))
    if unknown:
        raise ModelContractError(
            f"the transaction history {history.name} holds features serving does not compute: "
            f"{', '.join(unknown)}; declare them, or remove them from its features"
        )
    return HistoryState(state.client, history, prefix_beside(state_prefix))


def check_contract(
    model: LoadedModel, state: StreamState, history: HistoryState | None = None
) -> None:
    """Raise `ModelContractError` naming the features of `model` the core cannot compute.

    Without this check such a feature would be missing on every row, and the model's fitted
    default would silently stand in for it on 100% of the traffic.
    """
    computable = set(computable_features(state, history))
    missing = [name for name in model.feature_names if name not in computable]
    if missing:
        raise ModelContractError(
            f"{model.name} version {model.version} (feature service {model.feature_service}) "
            f"needs {', '.join(missing)}, which serving cannot compute from the declarations "
            f"in the feature repository (it computes {', '.join(sorted(computable))}); "
            "declare them, or set SKEWLESS_FEATURE_SERVICE / the champion to a model that "
            "uses declared features"
        )


class ScoringCore:
    """Features + champion model for batches of transactions.

    The champion must use only features the core computes (`check_contract`): at start a
    model that does not is refused, and the watcher does not swap to one. With a declared
    history, every scored transaction joins its entity's history, whatever the champion reads,
    so a model that reads it can take over at any moment.
    """

    def __init__(
        self, state: StreamState, watcher: ChampionWatcher, history: HistoryState | None = None
    ) -> None:
        check_contract(watcher.current, state, history)
        self.state = state
        self.history = history
        self.watcher = watcher
        watcher.accepts = lambda model: check_contract(model, state, history)
        self.views = {
            agg.declaration.name: OnlineView.of(PROJECT, agg.declaration)
            for agg in state.aggregations
        }

    @property
    def model(self) -> LoadedModel:
        return self.watcher.current

    def score(
        self, transactions: pd.DataFrame | Columns, degraded: np.ndarray | None = None
    ) -> ScoredBatch:
        """Score a batch (canonical columns without the label), in the order given.

        Rows flagged `degraded` still update the state but are scored without their window
        features (the model's defaults stand in): their entities' windows are not read, the
        cost that dominates a row, so a worker that fell behind catches up.
        """
        model = self.model
        columns = as_columns(transactions)
        rows = len(columns["transaction_id"])
        degraded = np.zeros(rows, bool) if degraded is None else degraded
        started = time.perf_counter()
        windows = self.state.score_features(columns, skip=degraded)
        values = transaction_feature_arrays(columns["tx_amount"], columns["tx_datetime"])
        for agg in self.state.aggregations:
            matrix = windows[agg.declaration.name]
            for index, name in enumerate(agg.declaration.feature_names):
                values[name] = matrix[:, index]
        if self.history is not None:  # (a second round trip: it stores the vectors just made)
            decl = self.history.history
            vectors = np.column_stack([values[name] for name in decl.features])
            earlier = self.history.push(columns, vectors.astype(np.float64))
            for index, name in enumerate(decl.column_names):
                values[name] = earlier[:, index]
        features = np.full((rows, len(model.feature_names)), np.nan)
        for position, name in enumerate(model.feature_names):
            if name in values:
                features[:, position] = values[name]
        feature_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scores = model.score(features.astype(np.float32))
        model_seconds = time.perf_counter() - started
        return ScoredBatch(
            transactions=columns,
            windows=windows,
            features=features,
            scores=scores,
            degraded=degraded,
            model=model,
            feature_seconds=feature_seconds,
            model_seconds=model_seconds,
        )

    def write_online(self, batch: ScoredBatch) -> None:
        """The last event of each entity in the batch becomes its Feast online row.

        One round trip. The worker's delivery stage runs it while the next batch is computed
        (it is not needed to score), before it produces this batch's scores, so
        `get_online_features` sees stream-fresh features by the time a score can be read.
        Degraded rows (scored without their windows) leave the rows of their entities as they
        were.
        """
        transactions, windows = batch.transactions, batch.windows
        computed = np.flatnonzero(~batch.degraded)  # degraded rows have no window values
        commands: list[Command] = []
        for agg in self.state.aggregations:
            decl = agg.declaration
            keys = np.asarray(transactions[decl.entity_key], dtype=np.int64)
            _, from_end = np.unique(keys[computed][::-1], return_index=True)
            last = computed[len(computed) - 1 - from_end]
            commands += self.views[decl.name].write_commands(
                keys[last].tolist(),
                windows[decl.name][last],
                np.asarray(transactions[decl.event_time], dtype=np.int64)[last].tolist(),
            )
        redis_batch.execute(self.state.client, commands)


def _warn_of_empty_state(state: StreamState, history: HistoryState | None) -> None:
    """Log each declaration whose state has no key in this layout (its values start empty),
    naming an older layout's keys when there are some. Redis failing here is only logged:
    scoring waits it out."""
    try:
        empty = [*state.empty(), history.empty() if history is not None else None]
    except redis.RedisError as exc:
        logger.warning("could not look for the state's keys: %r", exc)
        return
    for found in filter(None, empty):
        logger.warning("%s", found.message())


def build_core(settings: Settings) -> ScoringCore:
    """State, champion model (loaded with retries, watched for alias moves) and core."""
    from serving.champion import load_with_retry
    from skewless.feature_store import load_declarations, load_history, load_state_tiles
    from skewless.services import redis_server

    state = StreamState(
        redis_server.client(settings),
        load_declarations(settings),
        settings.stream_state_prefix,
        load_state_tiles(settings),
        timedelta(seconds=settings.state_allowed_lateness_s),
    )
    history = history_state(state, load_history(settings), settings.stream_state_prefix)
    _warn_of_empty_state(state, history)
    model = load_with_retry(settings, deadline_s=settings.service_start_timeout_s)
    check_contract(model, state, history)  # before the watcher starts: a refused model stops
    watcher = ChampionWatcher(settings, model, settings.champion_poll_s).start()
    return ScoringCore(state, watcher, history)
