"""The best figures any model can reach on simulated data under the handbook's protocol.

A compromised terminal turns every one of its transactions into a fraud for some days (28 by
default), and those transactions are drawn exactly as genuine ones: same cards, amounts and
times, at a terminal picked at random. Until one transaction of the compromise is labelled
(the label delay after it), nothing a model may read when it scores tells the compromise: no
feature, history or label carries it yet. Such a fraud is *hidden*.

The ceiling is the ranking of an oracle that knows every other fraud and what is knowable of
the rest. It puts every visible fraud first, then every other transaction by the number of
days on which a compromise covering it could have started unseen: the days, within the
compromise length before the transaction's day, whose midnight falls after the terminal's
latest labelled transaction (a compromise started before that transaction would have made it
a labelled fraud). Terminals are compromised independently and with the same chance every
day, and nothing else of a transaction depends on it, so the chance of a hidden compromise
grows with that count alone and this order is the best there is; ties are broken at random.

Every other scenario counts as visible, even a compromised card's fraud whose amount is not
unusual, so the ceiling is an upper bound, not a target. A compromise is revealed from its
first transaction whose label is known: `delay` or more before the scored transaction (the
label-delayed windows' edge, inclusive), through whatever window; with two compromises of one
terminal at once, from the earlier. Each choice can only raise the ceiling.

Next to it, the same ranking with every transaction that is not a visible fraud in random order
(`FoldCeiling.at_chance`): the best figures of a model that tells nothing of a hidden compromise.
And a model's AUC ROC read fraud kind by fraud kind (`rank_losses`): the AUC is the mean, over
the frauds, of the share of genuine transactions scored below each (ties count half), so
1 - AUC splits exactly into what each kind of fraud loses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import pandas as pd

from skewless.fraud_metrics import quality_metrics
from skewless.known_frauds import first_fraud_days, known_compromised
from skewless.simulator import SCENARIOS, SimulationResult, count_by_scenario
from skewless.stream_state import to_micros
from training.protocol import TimeSplit

COMPROMISED_TERMINAL = SCENARIOS.index("compromised_terminal") + 1
GENUINE = "genuine"
HIDDEN_TERMINAL = "compromised_terminal, hidden"
VISIBLE_TERMINAL = "compromised_terminal, visible"
FRAUD_KINDS = ("amount_over_220", VISIBLE_TERMINAL, HIDDEN_TERMINAL, "compromised_customer")
"""The kinds of fraud a ranking is read by (`fraud_kinds`), in the simulator's scenario order."""
_DAY_US = 86_400_000_000
_NONE = np.iinfo(np.int64).min


def latest_labelled(frame: pd.DataFrame, delay: timedelta) -> npt.NDArray[np.int64]:
    """For each transaction, the time (microseconds since the epoch) of its terminal's latest
    transaction at or before its own time - `delay`, whose label is known; `_NONE` if none."""
    terminal = frame["terminal_id"].to_numpy(dtype=np.int64)
    time = to_micros(frame["tx_datetime"])
    delay_us = delay // timedelta(microseconds=1)
    # One sorted key per (terminal, time): terminal * span + time since `origin`.
    origin = int(time.min()) - delay_us
    span = int(time.max()) - origin + 1
    if int(terminal.max()) >= np.iinfo(np.int64).max // span:
        raise ValueError("too many terminals over too long a time for one int64 key")
    keys = terminal * span + (time - origin)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    before = np.searchsorted(sorted_keys, keys - delay_us, side="right") - 1
    found = order[np.maximum(before, 0)]
    same = (before >= 0) & (terminal[found] == terminal)
    return np.where(same, time[found], _NONE)


def hidden_frauds(result: SimulationResult, latest: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """For each row of `result.transactions`: is it a compromised terminal's fraud whose
    compromise has no labelled transaction yet (`latest`: `latest_labelled`'s times)?"""
    frame = result.transactions
    rows = np.flatnonzero(result.scenario == COMPROMISED_TERMINAL)
    time = to_micros(frame["tx_datetime"])
    hits = pd.DataFrame(
        {"row": rows, "terminal_id": frame["terminal_id"].to_numpy()[rows], "time": time[rows]}
    )
    compromises = result.terminal_compromises.assign(
        start=lambda c: to_micros(c["start"]), end=lambda c: to_micros(c["end"])
    )
    covering = hits.merge(compromises, on="terminal_id")
    covering = covering[
        (covering["start"] <= covering["time"]) & (covering["time"] < covering["end"])
    ]
    start = covering.groupby("row")["start"].min().reindex(rows)
    if start.isna().any():
        raise ValueError("a compromised terminal's fraud lies outside every compromise")
    hidden = np.zeros(len(frame), dtype=bool)
    hidden[rows] = latest[rows] < start.to_numpy(dtype=np.int64)
    return hidden


def unseen_start_days(
    frame: pd.DataFrame, latest: npt.NDArray[np.int64], compromise_days: int
) -> npt.NDArray[np.int64]:
    """For each transaction, the days a compromise covering it could have started on and still
    have no labelled transaction: the `compromise_days` days up to the transaction's own, those
    whose midnight falls after the terminal's latest labelled transaction (`latest`)."""
    day = to_micros(frame["tx_datetime"]) // _DAY_US
    first_unseen = np.where(latest == _NONE, day - compromise_days + 1, latest // _DAY_US + 1)
    return day - np.maximum(first_unseen, day - compromise_days + 1) + 1


def fraud_kinds(scenario: npt.NDArray[np.int8], hidden: npt.NDArray[np.bool_]) -> pd.Series:
    """Each transaction's kind: `GENUINE`, or its scenario (`FRAUD_KINDS`), a compromised
    terminal's fraud split into hidden and visible (`hidden_frauds`)."""
    names = np.array([GENUINE, *SCENARIOS], dtype=object)[scenario]
    terminal = scenario == COMPROMISED_TERMINAL
    names[terminal] = np.where(hidden[terminal], HIDDEN_TERMINAL, VISIBLE_TERMINAL)
    return pd.Series(names, dtype=object)


@dataclass(frozen=True)
class KindLoss:
    """How a ranking places one kind of fraud among the genuine transactions."""

    frauds: int
    mean_rank: float
    """Mean share of genuine transactions scored below one of these frauds (ties half): 1.0
    above them all, 0.5 at random."""
    auc_loss: float
    """What these frauds take off the AUC ROC: the sum of (1 - rank) over all the frauds."""


def rank_losses(frame: pd.DataFrame) -> dict[str, KindLoss]:
    """`frame`'s AUC ROC read by kind of fraud: `tx_fraud`, `score` and `kind`
    (`fraud_kinds`) per transaction, both classes present. The AUC is 1 minus the sum of the
    kinds' `auc_loss`; the kinds are those of `FRAUD_KINDS` with a fraud in `frame`."""
    fraud = frame["tx_fraud"].to_numpy() > 0
    scores = frame["score"].to_numpy(dtype=np.float64)
    genuine = np.sort(scores[~fraud])
    if not genuine.size or fraud.all():
        raise ValueError("ranks need both genuine and fraudulent transactions")
    below = np.searchsorted(genuine, scores[fraud], side="left")
    tied = np.searchsorted(genuine, scores[fraud], side="right") - below
    rank = (below + 0.5 * tied) / genuine.size
    kinds = frame["kind"].to_numpy()[fraud]
    losses = {}
    for kind in FRAUD_KINDS:
        mine = rank[kinds == kind]
        if mine.size:
            losses[kind] = KindLoss(
                int(mine.size), float(mine.mean()), float((1 - mine).sum() / rank.size)
            )
    return losses


@dataclass(frozen=True)
class FoldCeiling:
    """One test fold's protocol test set: its frauds, the hidden ones, and the ceiling."""

    test_start: datetime
    transactions: int
    frauds_by_scenario: dict[str, int]
    hidden: int
    figures: dict[str, float]
    """`auc_roc`, `average_precision`, `card_precision_at_100` of the oracle's ranking."""
    at_chance: dict[str, float]
    """The same figures with the visible frauds first and every other transaction in random
    order: what a ranking reaches that tells nothing of a hidden compromise."""
    losses: dict[str, KindLoss]
    """The oracle's ranking read by kind of fraud (`rank_losses`)."""

    @property
    def frauds(self) -> int:
        return sum(self.frauds_by_scenario.values())


def protocol_test_sets(
    result: SimulationResult, folds: list[TimeSplit], delay_days: int
) -> list[pd.DataFrame]:
    """Each fold's protocol test set (`skewless.known_frauds`: the test window without the
    cards known compromised on the day, from the labels since the fold's training window),
    with each transaction's `scenario`, `hidden`, `unseen` (`unseen_start_days`) and `kind`."""
    latest = latest_labelled(result.transactions, timedelta(days=delay_days))
    hidden = hidden_frauds(result, latest)
    compromise_days = result.params.compromised_terminal_days
    frame = result.transactions.assign(
        scenario=result.scenario,
        hidden=hidden,
        unseen=unseen_start_days(result.transactions, latest, compromise_days),
        kind=fraud_kinds(result.scenario, hidden).to_numpy(),
    )
    tests = []
    for fold in folds:
        times = frame["tx_datetime"]
        labelled = frame[(times >= fold.train_start) & (times < fold.test_end)]
        test = frame[(times >= fold.test_start) & (times < fold.test_end)]
        tests.append(test[~known_compromised(test, first_fraud_days(labelled), delay_days)])
    return tests


def _mean_figures(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}


def protocol_ceiling(
    folds: list[TimeSplit], tests: list[pd.DataFrame], orders: int = 10, seed: int = 0
) -> list[FoldCeiling]:
    """The ceiling on each fold's protocol test set (`protocol_test_sets`' frames, in the
    folds' order), and the figures at chance, each averaged over `orders` random breaks of
    ties."""
    rng = np.random.default_rng(seed)
    ceilings = []
    for fold, test in zip(folds, tests, strict=True):
        visible = ((test["tx_fraud"] > 0) & ~test["hidden"]).to_numpy()
        rank = test["unseen"].to_numpy(dtype=np.float64)
        top = rank.max() + 1
        oracle = [
            test.assign(score=np.where(visible, top, rank) + rng.random(len(test)) * 0.5)
            for _ in range(orders)
        ]
        chance = [test.assign(score=visible + rng.random(len(test)) * 0.5) for _ in range(orders)]
        losses = [rank_losses(ranking) for ranking in oracle]
        ceilings.append(
            FoldCeiling(
                test_start=fold.test_start,
                transactions=len(test),
                frauds_by_scenario=count_by_scenario(test["scenario"].to_numpy()),
                hidden=int(test["hidden"].sum()),
                figures=_mean_figures([quality_metrics(ranking) for ranking in oracle]),
                at_chance=_mean_figures([quality_metrics(ranking) for ranking in chance]),
                losses={
                    kind: KindLoss(
                        first.frauds,
                        float(np.mean([run[kind].mean_rank for run in losses])),
                        float(np.mean([run[kind].auc_loss for run in losses])),
                    )
                    for kind, first in losses[0].items()
                },
            )
        )
    return ceilings
