"""The pure reference of fraud_model_v1 against a brute force written here, edges included."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from skewless.aggregation import Function, Output, WindowAggregation
from skewless.feature_store import load_declarations
from skewless.reference import feature_frame
from skewless.settings import load_settings
from skewless.simulator import SimulationParams, simulate

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _edge_rows() -> pd.DataFrame:
    """Events placed exactly on window bounds of one customer (900001) and one terminal (900002)."""
    rows = []
    later = T0 + 40 * DAY

    def add(when: datetime, customer: int, terminal: int, amount: float, fraud: int) -> None:
        rows.append((when, customer, terminal, amount, fraud))

    for days in (1, 7, 30):  # exactly a window length before `later`: outside (lower bound open)
        add(later - days * DAY, 900001, 1, 10.0 * days, 0)
        add(later - days * DAY + timedelta(microseconds=1), 900001, 1, 1.0, 0)  # just inside
    add(later, 900001, 1, 99.0, 0)
    add(later, 900001, 1, 5.0, 0)  # same timestamp: the first sees it not, the second does
    for days in (7, 8, 14, 37):  # delay 7: exactly d, d+1, d+7, d+30 days before `later`
        add(later - days * DAY, 2, 900002, 20.0, 1)
    add(later - 7 * DAY + timedelta(microseconds=1), 3, 900002, 20.0, 1)  # label not yet known
    add(later, 4, 900002, 30.0, 0)
    frame = pd.DataFrame(
        rows, columns=["tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]
    )
    frame["tx_fraud"] = frame["tx_fraud"].astype("int8")
    return frame


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    simulated = simulate(
        SimulationParams(n_customers=60, n_terminals=120, n_days=70, start_date=date(2026, 4, 1))
    ).transactions
    edges = _edge_rows()
    edges.insert(0, "transaction_id", np.arange(len(edges)) + 10_000_000)
    frame = pd.concat([simulated, edges], ignore_index=True)
    frame["tx_datetime"] = pd.to_datetime(frame["tx_datetime"], utc=True)
    return frame


def _brute_force(frame: pd.DataFrame) -> pd.DataFrame:
    """Every feature of fraud_model_v1 by scanning all pairs; written without the declaration."""
    records = [
        SimpleNamespace(**{str(k): v for k, v in row.items()}) for row in frame.to_dict("records")
    ]
    by_customer: dict[int, list[Any]] = {}
    by_terminal: dict[int, list[Any]] = {}
    for record in records:
        by_customer.setdefault(record.customer_id, []).append(record)
        by_terminal.setdefault(record.terminal_id, []).append(record)
    out = []
    for tx in records:
        row: dict[str, float] = {
            "amount": tx.tx_amount,
            "during_weekend": int(tx.tx_datetime.weekday() >= 5),
            "during_night": int(tx.tx_datetime.hour <= 6),
        }
        for days in (1, 7, 30):
            start = tx.tx_datetime - timedelta(days=days)
            mine = [
                other.tx_amount
                for other in by_customer[tx.customer_id]
                if start < other.tx_datetime
                and (other.tx_datetime, other.transaction_id) <= (tx.tx_datetime, tx.transaction_id)
            ]
            row[f"customer_tx_count_{days}d"] = len(mine)
            row[f"customer_avg_amount_{days}d"] = sum(mine) / len(mine) if mine else 0.0
        for days in (1, 2, 3, 7, 14, 21, 30):
            end = tx.tx_datetime - timedelta(days=7)
            known = [
                other.tx_fraud
                for other in by_terminal[tx.terminal_id]
                if end - timedelta(days=days) < other.tx_datetime <= end
            ]
            row[f"terminal_tx_count_{days}d"] = len(known)
            row[f"terminal_risk_{days}d"] = sum(known) / len(known) if known else 0.0
        out.append(row)
    return pd.DataFrame(out, index=frame.index)


def test_reference_matches_brute_force_on_every_feature(transactions: pd.DataFrame) -> None:
    declarations = load_declarations(load_settings())
    reference = feature_frame(transactions, declarations)
    expected = _brute_force(transactions)
    assert len(expected.columns) == 23
    for name in expected.columns:
        got = reference[name].to_numpy()
        want = expected[name].to_numpy()
        if "count" in name or name.startswith("during"):
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=name)


def test_window_edges_explicitly(transactions: pd.DataFrame) -> None:
    reference = feature_frame(transactions, load_declarations(load_settings()))
    later = T0 + 40 * DAY
    at_later = transactions["tx_datetime"] == later
    customer = reference[at_later & (transactions["customer_id"] == 900001)]
    first, second = customer.sort_values("transaction_id").to_dict("records")
    # 1-day window: the event exactly 1 day before is out, the one a microsecond later is in.
    assert first["customer_tx_count_1d"] == 2
    assert second["customer_tx_count_1d"] == 3
    assert first["customer_tx_count_7d"] == 4
    assert first["customer_tx_count_30d"] == 6
    assert second["customer_avg_amount_1d"] == pytest.approx((1.0 + 99.0 + 5.0) / 3)
    terminal = reference[at_later & (transactions["terminal_id"] == 900002)].iloc[0]
    # Delay 7: the event exactly 7 days before counts; 7 days minus 1 us does not yet.
    assert terminal["terminal_tx_count_1d"] == 1
    assert terminal["terminal_tx_count_7d"] == 2  # 7 and 8 in, 14 exactly on the bound: out
    assert terminal["terminal_tx_count_30d"] == 3  # 7, 8, 14 in; 37 exactly on the bound: out
    assert terminal["terminal_risk_7d"] == 1.0


def test_empty_window_yields_declared_value() -> None:
    declaration = WindowAggregation(
        name="t",
        entity="terminal",
        entity_key="terminal_id",
        windows_days=(1,),
        delay_days=7,
        outputs=(
            Output("n_{days}d", Function.COUNT),
            Output("risk_{days}d", Function.MEAN, column="tx_fraud", empty_value=-1.0),
        ),
    )
    frame = pd.DataFrame(
        {
            "transaction_id": [1],
            "tx_datetime": [T0],
            "customer_id": [1],
            "terminal_id": [1],
            "tx_amount": [1.0],
            "tx_fraud": [1],
        }
    )
    result = feature_frame(frame, (declaration,))
    assert result.loc[0, "n_1d"] == 0
    assert result.loc[0, "risk_1d"] == -1.0


def test_declaration_rejects_inconsistent_outputs() -> None:
    with pytest.raises(ValueError, match="days"):
        Output("no_window_length", Function.COUNT)
    with pytest.raises(ValueError, match="mean needs a column"):
        Output("avg_{days}d", Function.MEAN)
    with pytest.raises(ValueError, match="positive"):
        WindowAggregation("x", "c", "customer_id", (Output("n_{days}d", Function.COUNT),), (0,))


def test_window_feature_names_keep_declaration_order() -> None:
    outputs = (Output("n_{days}d", Function.COUNT), Output("avg_{days}d", Function.MEAN, "amt"))
    declaration = WindowAggregation("x", "c", "customer_id", outputs, (1, 2, 7, 30))
    assert declaration.window_feature_names((30, 1)) == ("n_1d", "avg_1d", "n_30d", "avg_30d")
    with pytest.raises(ValueError, match=r"no window of \[3\] days"):
        declaration.window_feature_names((1, 3))
