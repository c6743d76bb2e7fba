"""The transaction history's declaration: its columns, and what it refuses."""

from __future__ import annotations

import pytest

from skewless.aggregation import TransactionHistory


def test_columns_go_step_by_step_each_ending_with_its_age() -> None:
    history = TransactionHistory("h", "customer_id", length=2, features=("amount", "risk"))
    assert history.column_names == (
        "h_1_amount", "h_1_risk", "h_1_age_s", "h_2_amount", "h_2_risk", "h_2_age_s",
    )  # fmt: skip
    assert history.kept == 8


@pytest.mark.parametrize(
    ("length", "features", "kept_factor"),
    [(0, ("amount",), 4), (256, ("amount",), 4), (5, (), 4), (5, ("a", "a"), 4),
     (5, ("amount",), 0)],
)  # fmt: skip
def test_a_bad_declaration_is_refused(
    length: int, features: tuple[str, ...], kept_factor: int
) -> None:
    with pytest.raises(ValueError, match=r"length|features|kept"):
        TransactionHistory("h", "customer_id", length, features, kept_factor)
