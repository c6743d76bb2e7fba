"""The transaction history's and the log ratios' declarations: their columns, what they
read, and what they refuse."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from skewless.aggregation import TransactionHistory
from skewless.feature_store import load_declarations, load_log_ratios
from skewless.settings import load_settings


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


def test_the_repositorys_log_ratios_read_features_its_service_serves() -> None:
    settings = load_settings()
    ratios = load_log_ratios(settings)
    assert [ratio.name for ratio in ratios] == [
        "amount_to_customer_avg_1d", "amount_to_customer_avg_7d", "amount_to_customer_avg_30d",
    ]  # fmt: skip
    served = {"amount", *(name for d in load_declarations(settings) for name in d.feature_names)}
    assert {n for ratio in ratios for n in (ratio.numerator, ratio.denominator)} <= served


@pytest.mark.parametrize(
    ("declaration", "message"),
    [("LOG_RATIOS = [LogRatio('r', 'a', 'b')]", "no LogRatio tuple"),
     ("LOG_RATIOS = (LogRatio('r', 'a', 'b'), LogRatio('r', 'a', 'c'))", "repeats a name")],
)  # fmt: skip
def test_a_bad_log_ratio_declaration_is_named(
    tmp_path: Path, declaration: str, message: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "aggregations.py").write_text(
        f"from skewless.aggregation import LogRatio\n{declaration}\n"
    )
    settings = load_settings(feature_repo=repo)
    sys.modules.pop("skewless_feature_repo.aggregations", None)
    try:
        with pytest.raises((TypeError, ValueError), match=message):
            load_log_ratios(settings)
    finally:
        sys.modules.pop("skewless_feature_repo.aggregations", None)
