"""The fraud model: fitted preprocessing carried inside a torch module, training, ONNX export.

`FraudNet.forward` takes RAW features (NaN for missing) in the preprocessor's order and fills,
standardises and scores them itself, so the exported ONNX graph carries the defaults and the
scaling: serving feeds raw feature values and never re-implements the preprocessing. A
sequence model reads the declared transaction history too (`ModelInputs`): the same single
input, its last columns the history's steps, which a GRU reads inside the graph. Boosted trees
are trained by LightGBM and walked inside the graph too (`BoostedTrees`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import lightgbm
import numpy as np
import numpy.typing as npt
import onnx
import pandas as pd
import torch
from torch import nn

from skewless.aggregation import LogRatio
from skewless.fraud_metrics import auc_roc, average_precision
from skewless.model_runtime import ONNX_INPUT, ONNX_OUTPUT, FloatArray, Preprocessor

logger = logging.getLogger(__name__)

ONNX_OPSET = 18
ONNX_ML_DOMAIN = "ai.onnx.ml"
ONNX_ML_OPSET = 3


LOGISTIC_REGRESSION: Final = "logistic_regression"
FEEDFORWARD: Final = "feedforward"
SEQUENCE: Final = "sequence"
BOOSTED_TREES: Final = "boosted_trees"
ENSEMBLE: Final = "ensemble"
ModelFamily = Literal["logistic_regression", "feedforward", "sequence", "boosted_trees", "ensemble"]
AGE_SCALE = 10.0
"""A history step's age enters the GRU as `log1p(seconds) / AGE_SCALE` (30 days: about 1.5)."""


@dataclass(frozen=True)
class ModelInputs:
    """The columns a model may read: the feature service's, then the declared transaction
    history's (`TransactionHistory.column_names`: `history_steps` steps of equal width, each
    ending with its age in seconds)."""

    features: tuple[str, ...]
    history: tuple[str, ...] = ()
    history_steps: int = 0
    ratios: tuple[LogRatio, ...] = ()
    """Inputs every model computes in its graph from two of `features` (`LogRatio`)."""

    def __post_init__(self) -> None:
        if bool(self.history) != bool(self.history_steps) or (
            self.history and len(self.history) % self.history_steps
        ):
            raise ValueError("history columns must split into history_steps steps of one width")
        for ratio in self.ratios:
            missing = {ratio.numerator, ratio.denominator} - set(self.features)
            if missing:
                raise ValueError(
                    f"log ratio {ratio.name} reads {', '.join(sorted(missing))}, which the "
                    "feature service does not serve"
                )

    @property
    def step_width(self) -> int:
        """Columns of one history step (its features and its age)."""
        return len(self.history) // self.history_steps if self.history_steps else 0

    def columns_of_all(self) -> list[str]:
        """Every column a model may read."""
        return [*self.features, *self.history]

    def columns(self, params: TrainingParams) -> list[str]:
        """What a model of `params` reads, in its input order."""
        return [*self.features, *(self.history if params.reads_history else ())]

    def require_history(self, params: TrainingParams) -> None:
        if params.reads_history and not self.history:
            raise ValueError(
                "a sequence model reads the transaction history, and the feature repository "
                "declares none (TransactionHistory in aggregations.py)"
            )


class FraudNet(nn.Module):
    """Raw features -> fill NaN -> standardise -> [GRU over the history] -> MLP -> probability.

    Without hidden layers it is a logistic regression on the standardised features: the same
    module, training loop and ONNX export, so serving cannot tell the families apart. With
    `history_steps`, the last `history_steps * step width` input columns are the transaction
    history, step 1 (the latest) first; a step whose age is NaN is padding. A GRU of
    `history_units` reads the steps oldest first (standardised features and scaled age, zeroed
    on padding, and a presence flag), and the MLP reads the current features and its last state.
    With `ratios` (column pairs of the current features), the MLP also reads each pair's log
    ratio (`LogRatio`, of the filled values), standardised by `ratio_scaling`.
    """

    fill_values: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    oldest_first: torch.Tensor
    numerators: torch.Tensor
    denominators: torch.Tensor
    ratio_means: torch.Tensor
    ratio_stds: torch.Tensor

    def __init__(
        self,
        preprocessor: Preprocessor,
        hidden_sizes: tuple[int, ...],
        dropout: float = 0.0,
        history_steps: int = 0,
        step_width: int = 0,
        history_units: int = 0,
        ratios: tuple[tuple[int, int], ...] = (),
        ratio_scaling: Preprocessor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("fill_values", torch.tensor(preprocessor.fill_values))
        self.register_buffer("means", torch.tensor(preprocessor.means))
        self.register_buffer("stds", torch.tensor(preprocessor.stds))
        width = len(preprocessor.feature_names)
        self.history_steps, self.step_width = history_steps, step_width
        self.current_width = width - history_steps * step_width
        self.ratio_count = len(ratios)
        if ratios:
            if ratio_scaling is None or len(ratio_scaling.means) != len(ratios):
                raise ValueError("log ratios need their scaling, one mean and std per ratio")
            if max(max(pair) for pair in ratios) >= self.current_width:
                raise ValueError("a log ratio reads the current features only")
            numerators, denominators = _ratio_indices(ratios)
            self.register_buffer("numerators", numerators)
            self.register_buffer("denominators", denominators)
            self.register_buffer("ratio_means", torch.tensor(ratio_scaling.means))
            self.register_buffer("ratio_stds", torch.tensor(ratio_scaling.stds))
        self.gru: nn.GRU | None = None
        if history_steps:
            if step_width < 2 or history_units < 1 or self.current_width < 1:
                raise ValueError("a history needs steps of features and an age, and GRU units")
            self.register_buffer("oldest_first", torch.arange(history_steps - 1, -1, -1))
            # (per step: its standardised features, its scaled age, a presence flag)
            self.gru = nn.GRU(step_width + 1, history_units, batch_first=True)
            width = self.current_width + history_units
        width += self.ratio_count
        layers: list[nn.Module] = []
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            width = size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        """Fill NaN with the training medians, then standardise."""
        return (_filled(raw, self.fill_values) - self.means) / self.stds

    def log_ratios(self, raw: torch.Tensor) -> torch.Tensor:
        """Each ratio's standardised `_log_ratio_values`; shape `(batch, ratios)`."""
        return self._scaled_ratios(_filled(raw, self.fill_values))

    def _scaled_ratios(self, filled: torch.Tensor) -> torch.Tensor:
        ratios = _log_ratio_values(filled, self.numerators, self.denominators)
        return (ratios - self.ratio_means) / self.ratio_stds

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """One logit per row, shape `(batch,)`."""
        filled = _filled(raw, self.fill_values)  # once, for the scaling and the ratios
        inputs = (filled - self.means) / self.stds
        current = inputs[:, : self.current_width]
        if self.ratio_count:
            current = torch.cat([current, self._scaled_ratios(filled)], dim=1)
        if self.gru is not None:
            shape = (-1, self.history_steps, self.step_width)
            steps = inputs[:, self.current_width :].reshape(shape)
            ages = raw[:, self.current_width :].reshape(shape)[:, :, -1:]
            present = (~torch.isnan(ages)).to(inputs.dtype)
            age = torch.log1p(torch.clamp(torch.nan_to_num(ages), min=0.0)) / AGE_SCALE
            sequence = torch.cat([steps[:, :, :-1] * present, age * present, present], dim=2)
            _, last = self.gru(sequence[:, self.oldest_first])
            current = torch.cat([current, last[-1]], dim=1)
        return self.mlp(current).squeeze(-1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Fraud probability per row, shape `(batch,)`."""
        return torch.sigmoid(self.logits(raw))


def _ratio_indices(pairs: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The numerators' and the denominators' column positions of (numerator, denominator)
    pairs, as index tensors (empty without pairs)."""
    return (
        torch.tensor([numerator for numerator, _ in pairs], dtype=torch.long),
        torch.tensor([denominator for _, denominator in pairs], dtype=torch.long),
    )


def _filled(raw: torch.Tensor, fill_values: torch.Tensor) -> torch.Tensor:
    """NaN replaced by each column's fill value (the training median)."""
    return torch.where(torch.isnan(raw), fill_values, raw)


def _log_ratio_values(
    filled: torch.Tensor, numerators: torch.Tensor, denominators: torch.Tensor
) -> torch.Tensor:
    """`LogRatio`'s value for each (numerator, denominator) column pair of the filled input:
    `log1p(numerator) - log1p(denominator)`, each clamped at 0 first."""
    return torch.log1p(torch.clamp(filled[:, numerators], min=0.0)) - torch.log1p(
        torch.clamp(filled[:, denominators], min=0.0)
    )


class BoostedTrees(nn.Module):
    """Raw features -> fill NaN -> [log ratios] -> LightGBM's boosted trees -> probability.

    The trees read what they were trained on (`_tree_inputs`): the filled current features,
    then each log ratio unscaled. In torch every tree is walked for every row at once, `depth`
    steps of "left when the value is <= the node's threshold" (a leaf points to itself), and
    the leaves' values are summed into the logit, as LightGBM's own prediction does. The ONNX
    export is ONNX Runtime's own tree ensemble instead (`TreeEnsembleRegressor`, the same
    nodes): with it the searched ensemble (200 trees 6 deep and two networks) scores 500 rows
    in about 4.5 ms, against 26.5 ms with the walk exported (bench/README.md).
    """

    fill_values: torch.Tensor
    numerators: torch.Tensor
    denominators: torch.Tensor
    roots: torch.Tensor
    split_columns: torch.Tensor
    thresholds: torch.Tensor
    lefts: torch.Tensor
    rights: torch.Tensor
    leaf_values: torch.Tensor

    def __init__(
        self,
        preprocessor: Preprocessor,
        model_dump: dict[str, Any],
        ratios: tuple[tuple[int, int], ...] = (),
    ) -> None:
        super().__init__()
        self.register_buffer("fill_values", torch.tensor(preprocessor.fill_values))
        numerators, denominators = _ratio_indices(ratios)
        self.register_buffer("numerators", numerators)
        self.register_buffer("denominators", denominators)
        nodes = _TreeNodes.of(model_dump)
        if not nodes.roots:
            raise ValueError("a boosted-trees model needs one tree or more")
        width = len(preprocessor.feature_names) + len(ratios)
        if max(nodes.split_columns) >= width:
            raise ValueError(f"a tree splits on column {max(nodes.split_columns)} of {width}")
        self.depth = nodes.depth
        self.register_buffer("roots", torch.tensor(nodes.roots, dtype=torch.long))
        self.register_buffer("split_columns", torch.tensor(nodes.split_columns, dtype=torch.long))
        self.register_buffer("thresholds", torch.tensor(nodes.thresholds, dtype=torch.float32))
        self.register_buffer("lefts", torch.tensor(nodes.lefts, dtype=torch.long))
        self.register_buffer("rights", torch.tensor(nodes.rights, dtype=torch.long))
        self.register_buffer("leaf_values", torch.tensor(nodes.leaf_values, dtype=torch.float32))

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """One logit per row, shape `(batch,)`."""
        inputs = _tree_inputs(raw, self.fill_values, self.numerators, self.denominators)
        if torch.onnx.is_in_onnx_export():
            exported: torch.Tensor = _TreeEnsemble.apply(inputs, json.dumps(self.onnx_attributes()))
            return exported.squeeze(1)
        return self.walk(inputs)

    def walk(self, inputs: torch.Tensor) -> torch.Tensor:
        """The summed leaf values of `_tree_inputs` rows, shape `(batch,)`."""
        node = self.roots + torch.zeros_like(inputs[:, :1], dtype=torch.long)  # (batch, trees)
        for _ in range(self.depth):
            values = torch.gather(inputs, 1, self.split_columns[node])
            node = torch.where(values <= self.thresholds[node], self.lefts[node], self.rights[node])
        return self.leaf_values[node].sum(dim=1)

    def onnx_attributes(self) -> dict[str, Any]:
        """The nodes as `ai.onnx.ml` `TreeEnsembleRegressor`'s attributes (one target, the
        leaves' sum, no transform): each tree's nodes numbered from 0, `BRANCH_LEQ` splits."""
        count = len(self.leaf_values)
        roots = self.roots.numpy()
        tree_of = np.repeat(np.arange(len(roots)), np.diff([*roots, count]))
        offset = roots[tree_of]  # each node's tree's first node
        local = np.arange(count) - offset
        leaves = self.lefts.numpy() == np.arange(count)
        return {
            "n_targets_i": 1,
            "aggregate_function_s": "SUM",
            "post_transform_s": "NONE",
            "nodes_treeids_i": tree_of.tolist(),
            "nodes_nodeids_i": local.tolist(),
            "nodes_featureids_i": self.split_columns.tolist(),
            "nodes_values_f": np.where(leaves, 0.0, self.thresholds.numpy()).tolist(),
            "nodes_modes_s": ["LEAF" if leaf else "BRANCH_LEQ" for leaf in leaves],
            "nodes_truenodeids_i": (self.lefts.numpy() - offset).tolist(),
            "nodes_falsenodeids_i": (self.rights.numpy() - offset).tolist(),
            "nodes_missing_value_tracks_true_i": [0] * count,
            "target_treeids_i": tree_of[leaves].tolist(),
            "target_nodeids_i": local[leaves].tolist(),
            "target_ids_i": [0] * int(leaves.sum()),
            "target_weights_f": self.leaf_values.numpy()[leaves].tolist(),
        }

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Fraud probability per row, shape `(batch,)`."""
        return torch.sigmoid(self.logits(raw))


class _TreeEnsemble(torch.autograd.Function):
    """ONNX Runtime's `TreeEnsembleRegressor` of `BoostedTrees.onnx_attributes` (as JSON), in an
    export: the exporter traces this function's output shape, `(batch, 1)`, and writes the node
    that `symbolic` makes in its place. Scoring in torch walks the trees instead (`walk`)."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, attributes: str) -> torch.Tensor:
        return inputs.new_zeros((inputs.shape[0], 1))

    @staticmethod
    def symbolic(g: Any, inputs: Any, attributes: str) -> Any:
        output = g.op(f"{ONNX_ML_DOMAIN}::TreeEnsembleRegressor", inputs, **json.loads(attributes))
        output.setType(inputs.type().with_sizes([None, 1]))
        return output


def _tree_inputs(
    raw: torch.Tensor,
    fill_values: torch.Tensor,
    numerators: torch.Tensor,
    denominators: torch.Tensor,
) -> torch.Tensor:
    """What boosted trees read: the filled features, then each unscaled `_log_ratio_values`.

    A ratio of two infinite values is NaN: it reads as 0, as LightGBM reads a NaN where it
    trained on none (the graph's walk and ONNX Runtime's ensemble send a NaN different ways)."""
    filled = _filled(raw, fill_values)
    if not len(numerators):
        return filled
    ratios = _log_ratio_values(filled, numerators, denominators)
    return torch.cat([filled, torch.where(torch.isnan(ratios), 0.0, ratios)], dim=1)


@dataclass
class _TreeNodes:
    """Every node of every tree of a LightGBM model dump, numbered in one sequence."""

    roots: list[int]
    split_columns: list[int]
    thresholds: list[float]
    """float32, rounded down: a float32 value is <= it exactly when it is <= LightGBM's."""
    lefts: list[int]
    rights: list[int]
    leaf_values: list[float]
    depth: int

    @classmethod
    def of(cls, model_dump: dict[str, Any]) -> _TreeNodes:
        """Read `lightgbm.Booster.dump_model()`; numerical `<=` splits only."""
        nodes = cls([], [], [], [], [], [], 0)
        for tree in model_dump["tree_info"]:
            nodes.roots.append(nodes._add(tree["tree_structure"], 0))
        return nodes

    def _add(self, node: dict[str, Any], level: int) -> int:
        index = len(self.leaf_values)
        self.split_columns.append(0)
        self.thresholds.append(math.inf)
        self.lefts.append(index)
        self.rights.append(index)
        self.leaf_values.append(0.0)
        if "split_feature" not in node:  # a leaf
            self.leaf_values[index] = float(node["leaf_value"])
            self.depth = max(self.depth, level)
            return index
        if node["decision_type"] != "<=":
            raise ValueError(f"a tree split of type {node['decision_type']} is not supported")
        self.split_columns[index] = int(node["split_feature"])
        self.thresholds[index] = _float32_at_most(float(node["threshold"]))
        self.lefts[index] = self._add(node["left_child"], level + 1)
        self.rights[index] = self._add(node["right_child"], level + 1)
        return index


def _float32_at_most(value: float) -> float:
    """The largest float32 <= `value`."""
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


class EnsembleNet(nn.Module):
    """The mean of its members' fraud probabilities, as one module (one ONNX graph).

    Member k reads the first `widths[k]` input columns: a feed-forward or boosted-trees member
    the current features, a sequence member the history after them too. Each member carries its own
    preprocessing.
    """

    def __init__(self, members: list[FraudNet | BoostedTrees], widths: list[int]) -> None:
        super().__init__()
        if len(members) != len(widths) or len(members) < 2:
            raise ValueError("an ensemble needs two members or more, each with its input width")
        self.members = nn.ModuleList(members)
        self.widths = list(widths)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Fraud probability per row, shape `(batch,)`."""
        probabilities = [
            member(raw[:, :width]) for member, width in zip(self.members, self.widths, strict=True)
        ]
        return torch.stack(probabilities).mean(dim=0)


@dataclass(frozen=True)
class TrainingParams:
    """Architecture, optimiser, early stopping and class-imbalance settings of one run.

    `hidden_sizes=()` trains a logistic regression, `history_units > 0` a sequence model (a GRU
    of that width over the transaction history, then `hidden_sizes`), `trees > 0` boosted trees
    (LightGBM: that many rounds of trees `tree_depth` deep at `learning_rate`, L2 `tree_l2` on
    the leaves; the network settings are not read): `family`. With `members` it is an ensemble:
    each member trains on its own and the model is the mean of their probabilities
    (`EnsembleNet`); the ensemble's other settings are not read.

    `imbalance`: "none" (plain BCE), "pos_weight" (positives weighted by the negative/positive
    ratio in BCE) or "oversample" (positives repeated that many times per epoch); the ratio is
    capped at `max_positive_weight` (boosted trees: LightGBM's `scale_pos_weight`, and no
    "oversample"). "none" is the default: on simulated fraud_model_v1 data
    (0.9% fraud) it matched capped pos_weight on validation and test average precision, beat
    uncapped pos_weight and oversampling, and keeps the scores calibrated probabilities.
    """

    hidden_sizes: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 100
    patience: int = 5
    weight_decay: float = 0.0
    seed: int = 42
    imbalance: Literal["none", "pos_weight", "oversample"] = "none"
    max_positive_weight: float = 10.0
    history_units: int = 0
    trees: int = 0
    tree_depth: int = 6
    tree_l2: float = 0.0
    members: tuple[TrainingParams, ...] = ()

    @property
    def family(self) -> ModelFamily:
        """An ensemble with members; boosted trees with trees; a sequence model with history
        units; else logistic regression without hidden layers, a feed-forward network with
        them."""
        if self.members:
            return ENSEMBLE
        if self.trees:
            return BOOSTED_TREES
        if self.history_units:
            return SEQUENCE
        return FEEDFORWARD if self.hidden_sizes else LOGISTIC_REGRESSION

    @property
    def reads_history(self) -> bool:
        """Whether the model reads the transaction history (a sequence model, or an ensemble
        with one)."""
        return self.family == SEQUENCE or any(member.reads_history for member in self.members)

    def __post_init__(self) -> None:
        if len(self.members) == 1 or any(member.members for member in self.members):
            raise ValueError("an ensemble needs two members or more, none of them an ensemble")
        if self.history_units < 0 or self.trees < 0:
            raise ValueError("history units and trees cannot be negative")
        if self.trees and (self.history_units or self.imbalance == "oversample"):
            raise ValueError("boosted trees read no history and do not oversample")
        if self.tree_depth < 1 or self.tree_l2 < 0:
            raise ValueError("need tree_depth >= 1 and tree_l2 >= 0")
        if min((*self.hidden_sizes, self.batch_size, self.max_epochs, self.patience)) < 1:
            raise ValueError("hidden sizes, batch size, max epochs and patience must be >= 1")
        if not 0 <= self.dropout < 1 or self.learning_rate <= 0 or self.max_positive_weight < 1:
            raise ValueError("need 0 <= dropout < 1, learning rate > 0, max_positive_weight >= 1")


@dataclass(frozen=True)
class EpochReport:
    """Losses and validation metrics after one epoch (epochs count from 1)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_average_precision: float
    val_auc_roc: float
    seconds: float


@dataclass(frozen=True)
class TrainedModel:
    """The module with the best validation AP, its preprocessing, params and history."""

    module: FraudNet | BoostedTrees | EnsembleNet
    preprocessor: Preprocessor
    params: TrainingParams
    best_epoch: int
    history: tuple[EpochReport, ...]
    """An ensemble's: its members' epochs one after the other, and the last member's best."""


def train(
    features: pd.DataFrame,
    labels: npt.ArrayLike,
    val_features: pd.DataFrame,
    val_labels: npt.ArrayLike,
    params: TrainingParams,
    on_epoch: Callable[[EpochReport], None] | None = None,
    history_steps: int = 0,
    step_width: int = 0,
    ratios: tuple[LogRatio, ...] = (),
) -> TrainedModel:
    """Fit on (features, labels); early-stop on validation AP and keep the best weights.

    A sequence model (`params.history_units`) reads the last `history_steps` steps of
    `step_width` columns as the transaction history (`ModelInputs.columns`, `.step_width`).
    Every model reads `ratios` too, computed in its graph from two of its columns each.

    Boosted trees (`params.trees`) train in LightGBM on the rows as their graph reads them
    (`_tree_inputs`, float32), for a fixed number of rounds; their one report is the last.

    An ensemble (`params.members`) trains each member in turn on its own columns: all of them
    for a sequence member, the current features (without the history) for the others.

    Deterministic on CPU for a given seed (one thread, deterministic kernels; both settings are
    restored on return). The validation loss uses the same class weighting as the training loss.
    """
    if params.members:
        return _train_ensemble(
            features, labels, val_features, val_labels, params, on_epoch, history_steps,
            step_width, ratios,
        )  # fmt: skip
    preprocessor = Preprocessor.fit(features)
    pairs = _ratio_columns(features, ratios)
    x, y = _tensors(preprocessor, features, labels)
    val_x, val_y = _tensors(preprocessor, val_features, val_labels)
    if val_y.min() == val_y.max():
        raise ValueError("validation labels need both classes")
    n_positive = int(y.sum())
    logger.info("training on %d rows (%d frauds), validating on %d", len(y), n_positive, len(val_y))
    ratio = min((len(y) - n_positive) / max(n_positive, 1), params.max_positive_weight)
    weight = torch.tensor(ratio if params.imbalance == "pos_weight" else 1.0)
    criterion = nn.BCEWithLogitsLoss(pos_weight=weight)
    if params.trees:
        started = time.perf_counter()
        trees = _train_trees(preprocessor, pairs, x, y, params, ratio)
        with torch.inference_mode():
            train_loss = float(criterion(trees.logits(x), y))
        report = _validate(trees, criterion, val_x, val_y, 1, train_loss, started)
        if on_epoch is not None:
            on_epoch(report)
        return TrainedModel(trees, preprocessor, params, 1, (report,))
    rows = torch.arange(len(y))
    if params.imbalance == "oversample":
        extra = torch.nonzero(y > 0).squeeze(1).repeat(max(round(ratio) - 1, 0))
        rows = torch.cat([rows, extra])
    history: list[EpochReport] = []
    with _deterministic_cpu(params.seed) as generator:
        steps = history_steps if params.family == SEQUENCE else 0
        module = FraudNet(
            preprocessor, params.hidden_sizes, params.dropout, steps, step_width,
            params.history_units, pairs, _ratio_scaling(preprocessor, features, ratios, pairs),
        )  # fmt: skip
        optimizer = torch.optim.Adam(
            module.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
        )
        best_state, best_epoch, best_ap = copy.deepcopy(module.state_dict()), 0, -1.0
        for epoch in range(1, params.max_epochs + 1):
            started = time.perf_counter()
            order = rows[torch.randperm(len(rows), generator=generator)]
            module.train()
            train_loss = 0.0
            for batch_x, batch_y in zip(
                x[order].split(params.batch_size), y[order].split(params.batch_size), strict=True
            ):
                optimizer.zero_grad()
                loss = criterion(module.logits(batch_x), batch_y)
                loss.backward()
                optimizer.step()
                train_loss += float(loss.detach()) * len(batch_y) / len(order)
            report = _validate(module, criterion, val_x, val_y, epoch, train_loss, started)
            history.append(report)
            if on_epoch is not None:
                on_epoch(report)
            if report.val_average_precision > best_ap:
                best_state, best_epoch = copy.deepcopy(module.state_dict()), epoch
                best_ap = report.val_average_precision
            elif epoch - best_epoch >= params.patience:
                break
        logger.info("%d epochs, best %d (validation AP %.4f)", len(history), best_epoch, best_ap)
        module.load_state_dict(best_state)
        module.eval()
    return TrainedModel(module, preprocessor, params, best_epoch, tuple(history))


def _train_trees(
    preprocessor: Preprocessor,
    pairs: tuple[tuple[int, int], ...],
    x: torch.Tensor,
    y: torch.Tensor,
    params: TrainingParams,
    positive_weight: float,
) -> BoostedTrees:
    """LightGBM on `_tree_inputs(x)`: deterministic for a seed, one thread."""
    with torch.inference_mode():
        fill_values = torch.tensor(preprocessor.fill_values)
        inputs = _tree_inputs(x, fill_values, *_ratio_indices(pairs))
    settings = {
        "objective": "binary",
        "learning_rate": params.learning_rate,
        "max_depth": params.tree_depth,
        "num_leaves": min(2**params.tree_depth, 131_072),
        "lambda_l2": params.tree_l2,
        "scale_pos_weight": positive_weight if params.imbalance == "pos_weight" else 1.0,
        "seed": params.seed,
        "deterministic": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    booster = lightgbm.train(
        settings, lightgbm.Dataset(inputs.numpy(), label=y.numpy()), num_boost_round=params.trees
    )
    return BoostedTrees(preprocessor, booster.dump_model(), pairs).eval()


def _train_ensemble(
    features: pd.DataFrame,
    labels: npt.ArrayLike,
    val_features: pd.DataFrame,
    val_labels: npt.ArrayLike,
    params: TrainingParams,
    on_epoch: Callable[[EpochReport], None] | None,
    history_steps: int,
    step_width: int,
    ratios: tuple[LogRatio, ...],
) -> TrainedModel:
    members: list[FraudNet | BoostedTrees] = []
    widths: list[int] = []
    reports: list[EpochReport] = []
    best_epoch = 0
    history_width = history_steps * step_width if params.reads_history else 0
    for member in params.members:
        width = features.shape[1] - (0 if member.reads_history else history_width)
        trained = train(
            features.iloc[:, :width], labels, val_features.iloc[:, :width], val_labels,
            member, on_epoch, history_steps, step_width, ratios,
        )  # fmt: skip
        if isinstance(trained.module, EnsembleNet):
            raise TypeError("an ensemble's member is not an ensemble")
        members.append(trained.module)
        widths.append(width)
        reports += trained.history
        best_epoch = trained.best_epoch
    module = EnsembleNet(members, widths).eval()
    return TrainedModel(module, Preprocessor.fit(features), params, best_epoch, tuple(reports))


def _ratio_columns(
    features: pd.DataFrame, ratios: tuple[LogRatio, ...]
) -> tuple[tuple[int, int], ...]:
    """Each ratio's numerator and denominator as column positions of `features`."""
    columns = [str(name) for name in features.columns]
    missing = {n for r in ratios for n in (r.numerator, r.denominator)} - set(columns)
    if missing:
        raise ValueError(f"log ratios read columns the model does not: {sorted(missing)}")
    return tuple((columns.index(r.numerator), columns.index(r.denominator)) for r in ratios)


def _ratio_scaling(
    preprocessor: Preprocessor,
    features: pd.DataFrame,
    ratios: tuple[LogRatio, ...],
    pairs: tuple[tuple[int, int], ...],
) -> Preprocessor | None:
    """The log ratios' means and stds on the training rows (as `FraudNet.log_ratios` computes
    them, before scaling); None without ratios."""
    if not ratios:
        return None
    raw = torch.from_numpy(preprocessor.matrix(features).astype(np.float64))
    filled = _filled(raw, torch.tensor(preprocessor.fill_values, dtype=torch.float64))
    values = _log_ratio_values(filled, *_ratio_indices(pairs)).numpy()
    return Preprocessor.fit(pd.DataFrame(values, columns=[ratio.name for ratio in ratios]))


def predict(model: TrainedModel, features: pd.DataFrame) -> FloatArray:
    """Fraud probabilities for the rows of `features` (eager torch, in chunks of 64k rows)."""
    matrix = torch.from_numpy(model.preprocessor.matrix(features))
    model.module.eval()
    with torch.inference_mode():
        chunks = [model.module(chunk) for chunk in matrix.split(65_536)]
    return torch.cat(chunks).numpy() if chunks else np.empty(0, dtype=np.float32)


def export_onnx(model: TrainedModel, path: Path) -> Path:
    """Write the module, preprocessing included, as ONNX with a dynamic batch dimension.

    Input "features": float32 `(batch, n_features)` in `feature_names` order; output "score":
    float32 `(batch,)`. The preprocessor is stored as JSON in the metadata (`preprocessor`).
    torch's default (dynamo) exporter needs `onnxscript`, absent here, so the TorchScript
    exporter is used and its deprecation warning silenced.
    """
    module = copy.deepcopy(model.module).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # The GRU warns that other batch sizes than the traced one may fail, and traces its
        # input checks: its initial state is zeros of the batch's size, made in the graph, and
        # the tests score other batch sizes against eager torch.
        warnings.filterwarnings(
            "ignore", "Exporting a model to ONNX with a batch_size other than 1"
        )
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (torch.zeros(2, len(model.preprocessor.feature_names)),),
            str(path),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=ONNX_OPSET,
            custom_opsets={ONNX_ML_DOMAIN: ONNX_ML_OPSET},
            dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"preprocessor": json.dumps(model.preprocessor.to_dict())})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    logger.info("exported the ONNX model to %s", path)
    return path


def _validate(
    module: FraudNet | BoostedTrees,
    criterion: nn.Module,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    epoch: int,
    train_loss: float,
    started: float,
) -> EpochReport:
    """Score the validation set in eval mode and log the epoch's report."""
    module.eval()
    with torch.inference_mode():
        logits = module.logits(val_x)
        val_loss = float(criterion(logits, val_y))
    labels, scores = val_y.numpy(), torch.sigmoid(logits).numpy()
    report = EpochReport(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        val_average_precision=average_precision(labels, scores),
        val_auc_roc=auc_roc(labels, scores),
        seconds=time.perf_counter() - started,
    )
    logger.debug(  # the pipeline shows a progress bar; every epoch is in MLflow
        "epoch %d: train loss %.5f, val loss %.5f, val AP %.4f, val AUC %.4f (%.1f s)",
        *(epoch, train_loss, val_loss, report.val_average_precision, report.val_auc_roc),
        report.seconds,
    )
    return report


def _tensors(
    preprocessor: Preprocessor, features: pd.DataFrame, labels: npt.ArrayLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw feature matrix and float labels; labels must be 0/1 and one per row."""
    y = np.asarray(labels, dtype=np.float32).reshape(-1)
    if len(y) != len(features) or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("need one 0/1 label per feature row")
    return torch.from_numpy(preprocessor.matrix(features)), torch.from_numpy(y)


@contextmanager
def _deterministic_cpu(seed: int) -> Iterator[torch.Generator]:
    """Seed torch, use one thread and deterministic kernels; restore the settings after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
