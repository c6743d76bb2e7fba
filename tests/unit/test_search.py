"""Model selection: the grid, scoring a candidate on a validation fold, the choice."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from training import search
from training.evaluate import evaluate
from training.model import ModelInputs, TrainingParams
from training.search import Candidate, CandidateResult, FoldScore, SelectionFold

QUICK = TrainingParams(hidden_sizes=(8,), batch_size=64, max_epochs=2, patience=1, seed=3)
INPUTS = ModelInputs(("amount", "noise"))


def _fold(index: int, seed: int) -> SelectionFold:
    """A week of 6 cards a day: frauds are large amounts."""
    rng = np.random.default_rng(seed)
    n = 600
    frame = pd.DataFrame(
        {
            "customer_id": rng.integers(0, 40, n),
            "tx_datetime": pd.Timestamp("2026-05-01", tz="UTC")
            + pd.to_timedelta(rng.uniform(0, 7 * 86400, n), unit="s"),
            "amount": rng.lognormal(3.0, 1.0, n),
            "noise": rng.normal(0.0, 1.0, n),
        }
    )
    frame["tx_fraud"] = (frame["amount"] > 60).astype(np.int8)
    fit, stop, test = frame.iloc[:300], frame.iloc[300:400], frame.iloc[400:]
    known = np.zeros(len(test), dtype=bool)
    known[:10] = True
    return SelectionFold(index, fit, stop, test.reset_index(drop=True), known)


def _result(name: str, aps: list[float], family_sizes: tuple[int, ...] = (8,)) -> CandidateResult:
    candidate = Candidate(name, replace(QUICK, hidden_sizes=family_sizes))
    scores = tuple(
        FoldScore(k, {search.SELECTION_METRIC: ap}, 1, 2, 0.1, np.zeros(0, np.float32))
        for k, ap in enumerate(aps)
    )
    return CandidateResult(candidate, scores)


def test_grid_covers_every_family_with_distinct_names() -> None:
    grid = search.candidates(QUICK, with_history=False)
    names = [c.name for c in grid]
    assert len(set(names)) == len(grid)
    assert {c.params.family for c in grid} == {
        "feedforward",
        "logistic_regression",
        "boosted_trees",
    }
    trees = [c for c in grid if c.params.family == "boosted_trees"]
    assert "boosted_trees-200x6-l2_5-lr0.05-none" in [c.name for c in trees]
    assert all(c.params.hidden_sizes == () and c.params.trees == 200 for c in trees)
    with_history = search.candidates(QUICK)
    sequences = [c for c in with_history if c.params.family == "sequence"]
    assert [c.name for c in with_history if c.params.family != "sequence"] == names
    assert len(sequences) == 4 and all(c.params.history_units == 32 for c in sequences)
    assert "sequence-gru32-128x64-dropout0.2-lr0.003-pos_weight" in [c.name for c in sequences]
    assert {c.params.imbalance for c in grid} == {"none", "pos_weight", "oversample"}
    assert all(c.params.seed == QUICK.seed and c.params.max_epochs == 2 for c in grid)
    sizes = len(search.FEEDFORWARD_GRID["hidden_sizes"]) * len(search.FEEDFORWARD_GRID["dropout"])
    assert sum(c.params.family == "feedforward" for c in grid) == sizes * 4
    space = search.search_space()
    assert space["logistic_regression"]["hidden_sizes"] == [[]]


def test_choice_is_the_best_mean_validation_ap_and_the_first_on_a_tie() -> None:
    results = [
        _result("steady", [0.60, 0.60]),
        _result("spiky", [0.90, 0.20]),
        _result("best", [0.70, 0.65]),
        _result("tied", [0.65, 0.70]),
        _result("lr", [0.50, 0.50], family_sizes=()),
    ]
    assert search.choose(results).candidate.name == "best"
    stats = results[1].statistics()
    assert stats[f"{search.SELECTION_METRIC}_mean"] == pytest.approx(0.55)
    assert stats[f"{search.SELECTION_METRIC}_std"] == pytest.approx(0.35)
    baseline = search.best_of_family(results, "logistic_regression")
    assert baseline is not None and baseline.candidate.name == "lr"
    assert search.best_of_family(results[:1], "logistic_regression") is None
    with pytest.raises(ValueError, match="no candidate"):
        search.choose([])


def test_candidates_are_scored_on_each_fold_alike_in_workers_and_here() -> None:
    folds = [_fold(0, 1), _fold(1, 2)]
    grid = search.candidates(QUICK, False)[:1] + search.candidates(QUICK, False)[-1:]
    seen: list[str] = []
    here = search.run_search(grid, folds, INPUTS, 1, lambda r: seen.append(r.candidate.name))
    assert seen == [c.name for c in grid]
    for result in here:
        assert [score.fold for score in result.folds] == [0, 1]
        for score in result.folds:
            assert set(score.metrics) == {
                "validation_protocol_auc_roc",
                "validation_protocol_average_precision",
                "validation_protocol_card_precision_at_100",
            }
            assert 1 <= score.best_epoch <= score.epochs <= 2
        assert 0.0 < result.statistics()[f"{search.SELECTION_METRIC}_mean"] <= 1.0
    pooled = search.run_search(grid, folds, INPUTS, 2)
    for a, b in zip(here, pooled, strict=True):  # deterministic per seed, whatever the process
        assert [s.metrics for s in a.folds] == [s.metrics for s in b.folds]


def test_a_failing_candidate_stops_the_search_with_its_error() -> None:
    good = _fold(0, 1)
    no_frauds = replace(good, early_stopping=good.early_stopping.assign(tx_fraud=0))
    grid = search.candidates(QUICK)[:3]
    with pytest.raises(ValueError, match="both classes"):
        search.run_search(grid, [no_frauds, good], INPUTS, 2)


def test_ensemble_candidates_average_the_best_of_each_family_on_each_fold() -> None:
    folds = [_fold(0, 1), _fold(1, 2)]
    inputs = ModelInputs(("amount",), ("h_1_noise", "h_1_age_s"), 1)
    folds = [
        replace(fold, **{part: getattr(fold, part).assign(h_1_noise=0.0, h_1_age_s=60.0)
                         for part in ("fit", "early_stopping", "test")})
        for fold in folds
    ]  # fmt: skip
    grid = search.candidates(QUICK, True)
    feedforward = [c for c in grid if c.params.family == "feedforward"]
    sequence = [c for c in grid if c.params.family == "sequence"]
    trees = [c for c in grid if c.params.family == "boosted_trees"]
    results = search.run_search(feedforward[:2] + sequence[:1] + trees[:1], folds, inputs)
    assert search.ensembles_of_families(results[:2], folds) == []  # one family only
    ensembles = search.ensembles_of_families(results, folds)
    best = search.best_of_family(results, "feedforward")
    assert best is not None
    by_family = {"feedforward": best, "sequence": results[2], "boosted_trees": results[3]}
    expected_members = [
        ("feedforward", "sequence"),
        ("feedforward", "boosted_trees"),
        ("sequence", "boosted_trees"),
        ("feedforward", "sequence", "boosted_trees"),
    ]
    assert len(ensembles) == len(expected_members)
    for ensemble, families in zip(ensembles, expected_members, strict=True):
        members = [by_family[family] for family in families]
        params = TrainingParams(members=tuple(m.candidate.params for m in members))
        assert ensemble.candidate.params == params
        assert ensemble.candidate.name == "ensemble:" + "+".join(m.candidate.name for m in members)
        for k, fold in enumerate(folds):
            mean = sum(m.folds[k].scores.astype(np.float64) for m in members) / len(members)
            np.testing.assert_allclose(ensemble.folds[k].scores, mean, atol=1e-6)
            scored = fold.test.assign(score=ensemble.folds[k].scores)
            expected = evaluate(scored, fold.known_compromised)
            assert ensemble.folds[k].metrics[search.SELECTION_METRIC] == pytest.approx(
                expected["test_protocol_average_precision"]
            )
    assert search.search_space()["ensemble"]["members"] == [
        "the best feedforward",
        "the best sequence",
        "the best boosted_trees",
    ]
