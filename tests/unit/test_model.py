"""Unit tests for the fraud model: preprocessing, NaN handling, training, ONNX export."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
import pytest
import torch

from skewless.aggregation import LogRatio
from skewless.fraud_metrics import auc_roc, average_precision
from skewless.model_runtime import OnnxScorer, Preprocessor
from training.model import (
    BoostedTrees,
    EnsembleNet,
    EpochReport,
    FraudNet,
    ModelInputs,
    TrainedModel,
    TrainingParams,
    export_onnx,
    predict,
    train,
)

SMALL = TrainingParams(
    hidden_sizes=(16, 8), learning_rate=0.01, batch_size=64, max_epochs=12, patience=3, seed=7
)


def _synthetic(n: int, seed: int, nan_share: float = 0.05) -> tuple[pd.DataFrame, np.ndarray]:
    """A fraud-like rule: large amounts or very risky terminals; two columns are noise."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3.0, 1.0, n),
            "terminal_risk": rng.uniform(0.0, 1.0, n),
            "tx_count": rng.poisson(3.0, n).astype(np.float64),
            "noise": rng.normal(0.0, 1.0, n),
        }
    )
    labels = ((frame["amount"] > 80) | (frame["terminal_risk"] > 0.97)).to_numpy(np.int64)
    for column in ("tx_count", "noise"):
        frame.loc[rng.uniform(size=n) < nan_share, column] = np.nan
    return frame, labels


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    return {"train": _synthetic(3000, 1), "val": _synthetic(1500, 2), "test": _synthetic(3000, 3)}


@pytest.fixture(scope="module")
def trained(data: dict[str, tuple[pd.DataFrame, np.ndarray]]) -> TrainedModel:
    return train(*data["train"], *data["val"], SMALL)


def _untimed(history: tuple[EpochReport, ...]) -> list[EpochReport]:
    return [replace(report, seconds=0.0) for report in history]


def _hand_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": [1.0, 2.0, np.nan, 5.0],
            "constant": [3.0, 3.0, 3.0, 3.0],
            "never_seen": [np.nan] * 4,
        }
    )


def test_preprocessor_fits_medians_and_scaling_by_hand() -> None:
    fitted = Preprocessor.fit(_hand_frame())
    assert fitted.feature_names == ("amount", "constant", "never_seen")
    # amount: median of (1, 2, 5) = 2; filled (1, 2, 2, 5): mean 2.5, population std 1.5.
    assert fitted.fill_values == (2.0, 3.0, 0.0)
    assert fitted.means == (2.5, 3.0, 0.0)
    # A constant or never-seen feature is centred only: scale 1, never a division by zero.
    assert fitted.stds == (1.5, 1.0, 1.0)


def test_preprocessor_round_trips_through_json() -> None:
    fitted = Preprocessor.fit(_hand_frame())
    restored = Preprocessor.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert restored == fitted
    broken = fitted.to_dict() | {"means": [0.0]}
    with pytest.raises(ValueError, match="one fill value"):
        Preprocessor.from_dict(broken)


def test_matrix_follows_the_fitted_order_not_the_frame_order() -> None:
    fitted = Preprocessor.fit(_hand_frame())
    shuffled = _hand_frame()[["never_seen", "amount", "constant"]]
    matrix = fitted.matrix(shuffled)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[:, 0], [1.0, 2.0, np.nan, 5.0])
    with pytest.raises(KeyError, match="constant"):
        fitted.matrix(shuffled.drop(columns="constant"))


def test_module_fills_nan_and_standardises_inside_forward() -> None:
    fitted = Preprocessor.fit(_hand_frame())
    torch.manual_seed(0)
    net = FraudNet(fitted, hidden_sizes=(8,)).eval()
    raw = torch.tensor([[math.nan, 4.0, math.nan], [2.0, 3.0, 0.0]])
    expected = torch.tensor([[(2.0 - 2.5) / 1.5, 1.0, 0.0], [(2.0 - 2.5) / 1.5, 0.0, 0.0]])
    assert torch.allclose(net.preprocess(raw), expected, rtol=0, atol=1e-7)
    with torch.no_grad():
        scores = net(torch.tensor([[math.nan, 3.0, math.nan], [2.0, 3.0, 0.0]]))
    assert scores.shape == (2,)
    assert torch.isfinite(scores).all()
    assert scores[0] == scores[1]  # a missing value scores exactly like its fill value
    assert {name for name, _ in net.named_buffers()} == {"fill_values", "means", "stds"}


def test_training_is_deterministic_for_a_seed(
    data: dict[str, tuple[pd.DataFrame, np.ndarray]], trained: TrainedModel
) -> None:
    threads = torch.get_num_threads()
    again = train(*data["train"], *data["val"], SMALL)
    assert torch.get_num_threads() == threads  # settings restored after training
    assert not torch.are_deterministic_algorithms_enabled()
    for name, tensor in trained.module.state_dict().items():
        assert torch.equal(tensor, again.module.state_dict()[name]), name
    assert _untimed(again.history) == _untimed(trained.history)
    features = data["test"][0]
    np.testing.assert_array_equal(predict(trained, features), predict(again, features))
    other = train(*data["train"], *data["val"], replace(SMALL, seed=8, max_epochs=2))
    first_layer = "mlp.0.weight"
    assert not torch.equal(
        other.module.state_dict()[first_layer], trained.module.state_dict()[first_layer]
    )


def test_early_stopping_keeps_the_best_epoch() -> None:
    features, _ = _synthetic(2000, 4)
    val_features, _ = _synthetic(1000, 5)
    rng = np.random.default_rng(6)  # labels unrelated to the features: val AP wanders
    labels, val_labels = rng.integers(0, 2, 2000), rng.integers(0, 2, 1000)
    params = replace(SMALL, max_epochs=40, patience=2)
    reports: list[EpochReport] = []
    model = train(features, labels, val_features, val_labels, params, on_epoch=reports.append)
    assert tuple(reports) == model.history
    aps = [report.val_average_precision for report in model.history]
    assert model.best_epoch == 1 + int(np.argmax(aps))
    assert len(model.history) == model.best_epoch + params.patience < params.max_epochs
    kept = average_precision(val_labels, predict(model, val_features))
    assert kept == pytest.approx(aps[model.best_epoch - 1], abs=1e-12)
    assert kept > aps[-1]  # the last epoch's weights were not kept


def test_model_learns_an_easy_rule(
    data: dict[str, tuple[pd.DataFrame, np.ndarray]], trained: TrainedModel
) -> None:
    features, labels = data["test"]
    scores = predict(trained, features)
    base_rate = labels.mean()
    assert 0.05 < base_rate < 0.2
    assert average_precision(labels, scores) > 0.9
    assert auc_roc(labels, scores) > 0.97
    assert trained.best_epoch >= 1
    assert [report.epoch for report in trained.history] == list(range(1, len(trained.history) + 1))


def test_imbalance_options_change_training(
    data: dict[str, tuple[pd.DataFrame, np.ndarray]],
) -> None:
    quick = replace(SMALL, max_epochs=1)
    weights = {
        imbalance: train(
            *data["train"], *data["val"], replace(quick, imbalance=imbalance)
        ).module.state_dict()["mlp.0.weight"]
        for imbalance in ("none", "pos_weight", "oversample")
    }
    assert not torch.equal(weights["none"], weights["pos_weight"])
    assert not torch.equal(weights["none"], weights["oversample"])


def test_bad_inputs_are_rejected(data: dict[str, tuple[pd.DataFrame, np.ndarray]]) -> None:
    features, labels = data["train"]
    with pytest.raises(ValueError, match="both classes"):
        train(features, labels, features, np.zeros(len(features)), SMALL)
    with pytest.raises(ValueError, match="0/1 label"):
        train(features, labels[:-1], *data["val"], SMALL)
    with pytest.raises(ValueError):
        TrainingParams(hidden_sizes=(0,))
    with pytest.raises(ValueError):
        TrainingParams(dropout=1.0)


def test_onnx_export_agrees_with_eager_torch(trained: TrainedModel, tmp_path: Path) -> None:
    path = export_onnx(trained, tmp_path / "model" / "fraud.onnx")
    scorer = OnnxScorer(path)
    assert scorer.feature_names == trained.preprocessor.feature_names
    assert scorer.preprocessor == trained.preprocessor
    rng = np.random.default_rng(11)
    matrix = rng.normal(0.0, 50.0, size=(1000, len(scorer.feature_names))).astype(np.float32)
    matrix[rng.uniform(size=matrix.shape) < 0.2] = np.nan
    matrix[0, :] = np.nan  # a row with every feature missing
    frame = pd.DataFrame(matrix, columns=list(scorer.feature_names))
    eager = predict(trained, frame)
    onnx_scores = scorer.score(matrix)
    assert onnx_scores.shape == (1000,)
    assert onnx_scores.dtype == np.float32
    assert not np.isnan(onnx_scores).any()
    np.testing.assert_allclose(onnx_scores, eager, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scorer.score(matrix[3:4]), eager[3:4], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="matrix"):
        scorer.score(matrix[:, :2])


def test_no_hidden_layer_is_a_logistic_regression_that_exports_the_same_way(
    data: dict[str, tuple[pd.DataFrame, np.ndarray]], tmp_path: Path
) -> None:
    params = replace(SMALL, hidden_sizes=(), max_epochs=4)
    assert params.family == "logistic_regression" and SMALL.family == "feedforward"
    model = train(*data["train"], *data["val"], params)
    assert isinstance(model.module, FraudNet)
    linear = [m for m in model.module.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1 and linear[0].in_features == len(data["train"][0].columns)
    # sigmoid(w . standardised(filled x) + b), by hand
    test = data["test"][0]
    raw = torch.from_numpy(model.preprocessor.matrix(test))
    by_hand = torch.sigmoid(linear[0](model.module.preprocess(raw)).squeeze(-1)).detach().numpy()
    np.testing.assert_allclose(predict(model, test), by_hand, rtol=1e-6)
    onnx = OnnxScorer(export_onnx(model, tmp_path / "lr.onnx"))
    np.testing.assert_allclose(onnx.score(raw.numpy()), by_hand, rtol=1e-5, atol=1e-6)
    assert average_precision(data["test"][1], by_hand) > 0.5


SEQUENCE_HISTORY = ModelInputs(
    features=("amount", "noise"),
    history=tuple(f"h_{step}_{name}" for step in (1, 2, 3) for name in ("amount", "age_s")),
    history_steps=3,
)


def _sequences(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Fraud when the card's previous transaction was large and recent: nothing in the current
    transaction tells. A third of the rows have fewer than 3 earlier transactions (padding)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"amount": rng.lognormal(3.0, 1.0, n), "noise": rng.normal(0, 1, n)})
    for step in (1, 2, 3):
        frame[f"h_{step}_amount"] = rng.lognormal(3.0, 1.0, n)
        frame[f"h_{step}_age_s"] = rng.exponential(3_600.0 * step, n)
    earlier = rng.integers(0, 4, n)  # how many earlier transactions the card has
    for step in (1, 2, 3):
        frame.loc[earlier < step, [f"h_{step}_amount", f"h_{step}_age_s"]] = np.nan
    labels = (frame["h_1_amount"] > 40) & (frame["h_1_age_s"] < 1_800)
    return frame, labels.to_numpy(dtype=np.int64)


def test_a_sequence_model_learns_from_the_history_and_exports_the_same_way(
    tmp_path: Path,
) -> None:
    params = replace(SMALL, history_units=8, max_epochs=20)
    frame, labels = _sequences(6_000, 1)
    val_frame, val_labels = _sequences(2_000, 2)
    columns = SEQUENCE_HISTORY.columns(params)
    assert columns[-1] == "h_3_age_s" and SEQUENCE_HISTORY.columns(SMALL) == ["amount", "noise"]
    model = train(
        *(frame[columns], labels, val_frame[columns], val_labels, params),
        history_steps=3, step_width=SEQUENCE_HISTORY.step_width,
    )  # fmt: skip
    assert params.family == "sequence"
    scores = predict(model, val_frame[columns])
    assert auc_roc(val_labels, scores) > 0.95
    current_only = train(
        frame[["amount", "noise"]], labels, val_frame[["amount", "noise"]], val_labels, SMALL
    )
    assert auc_roc(val_labels, predict(current_only, val_frame[["amount", "noise"]])) < 0.6
    scorer = OnnxScorer(export_onnx(model, tmp_path / "sequence.onnx"))
    matrix = val_frame[columns].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(scorer.score(matrix), scores, atol=1e-5)
    empty = scorer.score(matrix[:0])  # ONNX Runtime's GRU aborted the process on no row
    assert empty.shape == (0,) and empty.dtype == np.float32
    padded = val_frame["h_3_age_s"].isna().to_numpy()
    changed = matrix.copy()
    changed[:, columns.index("h_3_amount")] = 1e6  # a padded step's features are not read
    assert (scorer.score(changed)[padded] == scorer.score(matrix)[padded]).all()
    assert (scorer.score(changed)[~padded] != scorer.score(matrix)[~padded]).any()


def test_a_sequence_model_needs_a_declared_history() -> None:
    with pytest.raises(ValueError, match="declares none"):
        ModelInputs(("amount",)).require_history(replace(SMALL, history_units=8))
    with pytest.raises(ValueError, match="steps of one width"):
        ModelInputs(("amount",), ("a", "b", "c"), 2)


def test_an_ensemble_is_the_mean_of_its_members_trained_alone(tmp_path: Path) -> None:
    """A feed-forward member reads the current features only, a sequence member the history
    too; each trains as it would alone, and the export scores their mean."""
    feedforward, sequence = SMALL, replace(SMALL, history_units=8, max_epochs=6)
    params = TrainingParams(members=(feedforward, sequence))
    assert params.family == "ensemble" and params.reads_history
    frame, labels = _sequences(3_000, 1)
    val_frame, val_labels = _sequences(1_000, 2)
    columns = SEQUENCE_HISTORY.columns(params)
    assert columns == SEQUENCE_HISTORY.columns(sequence)
    steps, width = 3, SEQUENCE_HISTORY.step_width
    model = train(
        frame[columns], labels, val_frame[columns], val_labels, params, None, steps, width
    )
    assert isinstance(model.module, EnsembleNet) and model.module.widths == [2, len(columns)]
    current = ["amount", "noise"]
    alone = [
        train(frame[current], labels, val_frame[current], val_labels, feedforward),
        train(frame[columns], labels, val_frame[columns], val_labels, sequence, None, steps, width),
    ]
    expected = (predict(alone[0], val_frame[current]) + predict(alone[1], val_frame[columns])) / 2
    np.testing.assert_allclose(predict(model, val_frame[columns]), expected, atol=1e-7)
    assert len(model.history) == len(alone[0].history) + len(alone[1].history)
    scorer = OnnxScorer(export_onnx(model, tmp_path / "ensemble.onnx"))
    assert list(scorer.feature_names) == columns
    matrix = val_frame[columns].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(scorer.score(matrix), expected, atol=1e-6)


def test_an_ensemble_without_a_sequence_member_reads_no_history() -> None:
    """The pipeline passes the declared history's shape to every model; an ensemble without a
    sequence member gets the current features only, and all its members read all of them."""
    params = TrainingParams(members=(SMALL, replace(SMALL, hidden_sizes=())))
    frame, labels = _sequences(1_000, 1)
    columns = SEQUENCE_HISTORY.columns(params)
    assert columns == ["amount", "noise"]
    model = train(frame[columns], labels, frame[columns], labels, params, None, 3, 2)
    assert isinstance(model.module, EnsembleNet) and model.module.widths == [2, 2]


def test_an_ensemble_needs_two_members_none_an_ensemble() -> None:
    with pytest.raises(ValueError, match="two members or more"):
        TrainingParams(members=(SMALL,))
    pair = TrainingParams(members=(SMALL, SMALL))
    with pytest.raises(ValueError, match="none of them an ensemble"):
        TrainingParams(members=(SMALL, pair))
    assert not pair.reads_history
    with pytest.raises(ValueError, match="declares none"):
        ModelInputs(("amount",)).require_history(
            TrainingParams(members=(SMALL, replace(SMALL, history_units=8)))
        )


RATIO = LogRatio("amount_to_avg", "amount", "avg_amount")


def _relative_amounts(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Fraud when the amount is 4 times the card's average or more: the averages spread over
    two orders of magnitude, so no amount alone tells. Some averages are missing."""
    rng = np.random.default_rng(seed)
    average = rng.lognormal(3.0, 1.2, n)
    factor = np.where(rng.uniform(size=n) < 0.1, rng.uniform(4.0, 6.0, n), rng.uniform(0.3, 2, n))
    frame = pd.DataFrame({"amount": average * factor, "avg_amount": average})
    frame["noise"] = rng.normal(0.0, 1.0, n)
    labels = (factor >= 4.0).astype(np.int64)
    frame.loc[rng.uniform(size=n) < 0.02, "avg_amount"] = np.nan
    return frame, labels


def test_a_log_ratio_is_computed_inside_the_graph_and_learned_from(tmp_path: Path) -> None:
    frame, labels = _relative_amounts(4_000, 1)
    val_frame, val_labels = _relative_amounts(2_000, 2)
    params = replace(SMALL, max_epochs=20)
    model = train(frame, labels, val_frame, val_labels, params, ratios=(RATIO,))
    apart = train(frame, labels, val_frame, val_labels, params)
    assert isinstance(model.module, FraudNet)
    # By hand: log1p of the filled values clamped at 0, then the training rows' scaling.
    fill = model.preprocessor.fill_values
    logs = np.log1p(np.clip(frame[["amount", "avg_amount"]].fillna(dict(zip(
        ["amount", "avg_amount"], fill[:2], strict=True))).to_numpy(), 0.0, None))  # fmt: skip
    ratio = logs[:, 0] - logs[:, 1]
    raw = torch.from_numpy(model.preprocessor.matrix(frame))
    computed = model.module.log_ratios(raw).detach().numpy()[:, 0]
    np.testing.assert_allclose(computed, (ratio - ratio.mean()) / ratio.std(), atol=1e-4)
    with_ratio = auc_roc(val_labels, predict(model, val_frame))
    assert with_ratio > 0.99 and with_ratio > auc_roc(val_labels, predict(apart, val_frame))
    scorer = OnnxScorer(export_onnx(model, tmp_path / "ratio.onnx"))
    assert scorer.feature_names == ("amount", "avg_amount", "noise")  # serving feeds the same
    matrix = val_frame.to_numpy(dtype=np.float32)
    matrix[0, :] = np.nan
    matrix[1, :2] = (-5.0, 0.0)  # clamped at 0: log1p(0) - log1p(0)
    np.testing.assert_allclose(scorer.score(matrix), predict(model, pd.DataFrame(
        matrix, columns=val_frame.columns)), atol=1e-5)  # fmt: skip
    assert not np.isnan(scorer.score(matrix)).any()


def test_sequence_and_ensemble_models_read_the_log_ratios_too(tmp_path: Path) -> None:
    inputs = replace(SEQUENCE_HISTORY, features=("amount", "noise", "avg_amount"), ratios=(RATIO,))
    frame, labels = _sequences(2_000, 1)
    frame["avg_amount"] = frame["amount"] / 2
    sequence = replace(SMALL, history_units=8, max_epochs=4)
    params = TrainingParams(members=(replace(SMALL, max_epochs=4), sequence))
    columns = inputs.columns(params)
    model = train(
        frame[columns], labels, frame[columns], labels, params, None, 3, inputs.step_width,
        inputs.ratios,
    )  # fmt: skip
    assert isinstance(model.module, EnsembleNet)
    for member in model.module.members:
        assert isinstance(member, FraudNet) and member.ratio_count == 1
        first = next(m for m in member.mlp.modules() if isinstance(m, torch.nn.Linear))
        assert first.in_features == 3 + 1 + (8 if member.gru is not None else 0)
    scorer = OnnxScorer(export_onnx(model, tmp_path / "ensemble.onnx"))
    matrix = frame[columns].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(scorer.score(matrix), predict(model, frame[columns]), atol=1e-6)


def test_a_log_ratio_must_read_served_features() -> None:
    with pytest.raises(ValueError, match="log ratio amount_to_avg reads avg_amount"):
        ModelInputs(("amount", "noise"), ratios=(RATIO,))
    frame, labels = _relative_amounts(200, 1)
    with pytest.raises(ValueError, match="columns the model does not"):
        train(frame[["amount", "noise"]], labels, frame[["amount", "noise"]], labels, SMALL,
              ratios=(RATIO,))  # fmt: skip
    with pytest.raises(ValueError, match="to itself"):
        LogRatio("same", "amount", "amount")


TREES = TrainingParams(hidden_sizes=(), trees=60, tree_depth=4, learning_rate=0.1, seed=5)


def _two_trees() -> dict[str, object]:
    """A LightGBM model dump of two trees over 2 columns, as `Booster.dump_model()` writes it."""

    def split(column: int, threshold: float, left: dict, right: dict) -> dict:
        return {"split_index": 0, "split_feature": column, "threshold": threshold,
                "decision_type": "<=", "default_left": True, "missing_type": "None",
                "left_child": left, "right_child": right}  # fmt: skip

    def leaf(value: float) -> dict:
        return {"leaf_index": 0, "leaf_value": value}

    first = split(0, 10.0, leaf(-1.0), split(1, 0.1, leaf(0.5), leaf(2.0)))
    return {"tree_info": [{"tree_structure": first}, {"tree_structure": leaf(0.25)}]}


def test_boosted_trees_walk_lightgbm_s_splits_by_hand() -> None:
    """Left when the value is <= the threshold, a tree of one leaf adds its value; NaN takes
    the fill value first. 0.1 is no float32: the float32 nearest it is above it and goes right,
    the next one down goes left."""
    preprocessor = Preprocessor(("amount", "risk"), (20.0, 0.0), (0.0, 0.0), (1.0, 1.0))
    trees = BoostedTrees(preprocessor, _two_trees())
    above = float(np.float32(0.1))
    below = float(np.nextafter(np.float32(0.1), np.float32(0.0)))
    assert below < 0.1 < above
    rows = torch.tensor(
        [[10.0, 5.0], [10.5, 0.0], [11.0, above], [11.0, below], [math.nan, 1.0]],
        dtype=torch.float32,
    )
    expected = torch.tensor([-1.0, 0.5, 2.0, 0.5, 2.0]) + 0.25
    torch.testing.assert_close(trees.logits(rows), expected)
    torch.testing.assert_close(trees(rows), torch.sigmoid(expected))
    assert trees.depth == 2
    with pytest.raises(ValueError, match="splits on column 5"):
        dump = _two_trees()
        dump["tree_info"][0]["tree_structure"]["split_feature"] = 5  # type: ignore[index]
        BoostedTrees(preprocessor, dump)
    with pytest.raises(ValueError, match="type =="):
        dump = _two_trees()
        dump["tree_info"][0]["tree_structure"]["decision_type"] = "=="  # type: ignore[index]
        BoostedTrees(preprocessor, dump)


def test_boosted_trees_score_as_lightgbm_and_export_the_same_way(tmp_path: Path) -> None:
    """The oracle is LightGBM itself, trained on the inputs computed by hand: the filled
    features, then the log ratio (float32, as the graph reads them)."""
    frame, labels = _relative_amounts(4_000, 1)
    val_frame, val_labels = _relative_amounts(2_000, 2)
    model = train(frame, labels, val_frame, val_labels, TREES, ratios=(RATIO,))
    assert isinstance(model.module, BoostedTrees) and TREES.family == "boosted_trees"
    assert model.best_epoch == 1 and len(model.history) == 1
    filled = frame.fillna(dict(zip(frame.columns, model.preprocessor.fill_values, strict=True)))
    logs = np.log1p(np.clip(filled[["amount", "avg_amount"]].to_numpy(np.float32), 0.0, None))
    inputs = np.column_stack([filled.to_numpy(np.float32), logs[:, 0] - logs[:, 1]])
    booster = lightgbm.train(
        {"objective": "binary", "learning_rate": 0.1, "max_depth": 4, "num_leaves": 16,
         "lambda_l2": 0.0, "seed": 5, "deterministic": True, "num_threads": 1, "verbosity": -1},
        lightgbm.Dataset(inputs, label=labels), num_boost_round=60,
    )  # fmt: skip
    assert booster.num_trees() == 60
    np.testing.assert_allclose(predict(model, frame), booster.predict(inputs), atol=1e-5)
    assert auc_roc(val_labels, predict(model, val_frame)) > 0.99
    scorer = OnnxScorer(export_onnx(model, tmp_path / "trees.onnx"))
    assert scorer.feature_names == ("amount", "avg_amount", "noise")
    matrix = val_frame.to_numpy(dtype=np.float32)
    matrix[0, :] = np.nan
    matrix[1, :2] = (-5.0, 0.0)
    matrix[2, 0] = 3.4e38
    matrix[3, :2] = np.inf  # a ratio of NaN
    matrix[4, :2] = (np.inf, 1.0)
    onnx_scores = scorer.score(matrix)
    eager = predict(model, pd.DataFrame(matrix, columns=val_frame.columns))
    np.testing.assert_allclose(onnx_scores, eager, atol=1e-5)
    assert np.isfinite(onnx_scores).all()


def test_an_ensemble_with_boosted_trees_is_the_mean_and_exports(tmp_path: Path) -> None:
    frame, labels = _relative_amounts(2_000, 1)
    params = TrainingParams(members=(replace(SMALL, max_epochs=3), TREES))
    model = train(frame, labels, frame, labels, params, ratios=(RATIO,))
    assert isinstance(model.module, EnsembleNet) and not params.reads_history
    alone = [train(frame, labels, frame, labels, m, ratios=(RATIO,)) for m in params.members]
    expected = (predict(alone[0], frame) + predict(alone[1], frame)) / 2
    np.testing.assert_allclose(predict(model, frame), expected, atol=1e-7)
    scorer = OnnxScorer(export_onnx(model, tmp_path / "ensemble.onnx"))
    np.testing.assert_allclose(scorer.score(frame.to_numpy(np.float32)), expected, atol=1e-5)


def test_boosted_trees_refuse_a_history_and_oversampling() -> None:
    with pytest.raises(ValueError, match="no history"):
        replace(TREES, history_units=8)
    with pytest.raises(ValueError, match="do not oversample"):
        replace(TREES, imbalance="oversample")
    with pytest.raises(ValueError, match="tree_depth"):
        replace(TREES, tree_depth=0)
    with pytest.raises(ValueError, match="cannot be negative"):
        replace(TREES, trees=-1)
    weighted = replace(TREES, imbalance="pos_weight")
    frame, labels = _relative_amounts(1_000, 1)
    plain = predict(train(frame, labels, frame, labels, TREES), frame)
    trained = train(frame, labels, frame, labels, weighted)
    scores = predict(trained, frame)
    assert not np.allclose(scores, plain)
    # Both losses weight the frauds as the training did, as a network's do.
    y = np.asarray(labels, dtype=float)
    positive_weight = min((len(y) - y.sum()) / y.sum(), weighted.max_positive_weight)
    p = np.clip(scores.astype(float), 1e-12, 1 - 1e-12)
    loss = -np.mean(positive_weight * y * np.log(p) + (1 - y) * np.log(1 - p))
    assert positive_weight > 1
    np.testing.assert_allclose(trained.history[0].val_loss, loss, rtol=1e-4)
    np.testing.assert_allclose(trained.history[0].train_loss, loss, rtol=1e-4)
