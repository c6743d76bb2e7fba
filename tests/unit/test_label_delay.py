"""The label delay is stated once, by the declarations; every path reads it from there."""

from __future__ import annotations

from dataclasses import replace

import pytest

from skewless.aggregation import Function, Output, WindowAggregation, label_delay_days
from skewless.feature_store import load_declarations
from skewless.settings import load_settings

UNDELAYED = WindowAggregation(
    name="spending",
    entity="customer",
    entity_key="customer_id",
    outputs=(Output("tx_count_{days}d", Function.COUNT),),
    windows_days=(1,),
)


def test_the_feature_repository_states_the_delay_of_its_label_windows() -> None:
    declarations = load_declarations(load_settings())
    delayed = [declaration for declaration in declarations if declaration.delay_days > 0]
    assert delayed  # the reference feature set reads labels
    assert label_delay_days(declarations) == delayed[0].delay_days == 7


def test_the_delay_follows_the_declaration() -> None:
    risk = replace(UNDELAYED, name="risk", delay_days=3)
    assert label_delay_days([UNDELAYED, risk, replace(risk, name="risk_again")]) == 3
    assert label_delay_days([UNDELAYED]) == 0


def test_declarations_that_disagree_are_refused() -> None:
    delays = [replace(UNDELAYED, name=f"risk_{d}", delay_days=d) for d in (3, 7)]
    with pytest.raises(ValueError, match=r"disagree on the label delay: \[3, 7\]"):
        label_delay_days(delays)
