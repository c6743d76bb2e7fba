"""`skewless train`'s model options: what they build, and a bad one named."""

from __future__ import annotations

import pytest
import typer

from skewless_cli.cli import _training_params


def test_the_model_options_build_the_params_of_each_family() -> None:
    sequence = _training_params(5, 1, "64", 0.2, 3e-3, "none", 32)
    assert (sequence.family, sequence.hidden_sizes, sequence.history_units) == (
        "sequence",
        (64,),
        32,
    )
    assert _training_params(5, 1, "128, 64", 0.0, 1e-3, "pos_weight", 0).family == "feedforward"
    assert _training_params(5, 1, "", 0.0, 1e-2, "oversample", 0).family == "logistic_regression"
    trees = _training_params(5, 1, "64,32", 0.0, 0.05, "none", 0, 200, 4, 5.0)
    assert (trees.family, trees.trees, trees.tree_depth, trees.tree_l2) == (
        "boosted_trees",
        200,
        4,
        5.0,
    )


@pytest.mark.parametrize(
    ("sizes", "imbalance", "option"),
    [("64,x", "none", "--hidden-sizes"), ("64,0", "none", "--hidden-sizes"),
     ("64", "smote", "--imbalance")],
)  # fmt: skip
def test_a_bad_model_option_is_named(sizes: str, imbalance: str, option: str) -> None:
    with pytest.raises(typer.BadParameter) as raised:
        _training_params(5, 1, sizes, 0.0, 1e-3, imbalance, 0)
    assert raised.value.param_hint == option


def test_boosted_trees_with_a_history_or_oversampling_name_the_trees_option() -> None:
    for history_units, imbalance in ((32, "none"), (0, "oversample")):
        with pytest.raises(typer.BadParameter) as raised:
            _training_params(5, 1, "", 0.0, 0.05, imbalance, history_units, 200)
        assert raised.value.param_hint == "--trees"
