"""The streaming transaction history against the offline builder, on Redis and Redis Cluster."""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from skewless.aggregation import TransactionHistory
from skewless.history import HistoryState, offline_history
from skewless.services import redis_server
from skewless.settings import Settings
from skewless.stream_state import as_columns

pytestmark = pytest.mark.integration

HISTORY = TransactionHistory(
    name="customer_history", entity_key="customer_id", length=3, features=("amount", "risk"),
    kept_factor=8,
)  # fmt: skip


def _transactions(rows: int, customers: int, seed: int = 7) -> pd.DataFrame:
    """Transactions with many same-instant pairs (whole minutes) and ids not in time order."""
    rng = np.random.default_rng(seed)
    minutes = rng.integers(0, 3 * 24 * 60, rows)
    return pd.DataFrame({
        "transaction_id": rng.permutation(rows).astype(np.int64) + 1,
        "tx_datetime": pd.Timestamp("2026-06-01", tz="UTC") + pd.to_timedelta(minutes, "min"),
        "customer_id": rng.integers(0, customers, rows),
        "amount": np.round(rng.lognormal(3, 1.5, rows), 2),
        "risk": rng.random(rows) / 3,
    })  # fmt: skip


def _state(settings: Settings) -> HistoryState:
    return HistoryState(redis_server.client(settings), HISTORY, f"test:{uuid.uuid4().hex}")


def _push(state: HistoryState, batch: pd.DataFrame) -> pd.DataFrame:
    """The batch's histories from the state, indexed by transaction id."""
    got = state.push(as_columns(batch), batch[list(HISTORY.features)].to_numpy(np.float64))
    index = pd.Index(batch["transaction_id"], name="transaction_id")
    return pd.DataFrame(got, index=index, columns=list(HISTORY.column_names))


def test_offline_history_follows_time_then_id_and_pads_with_nan() -> None:
    at = pd.Timestamp("2026-06-01", tz="UTC")
    frame = pd.DataFrame({
        "transaction_id": [5, 2, 9, 4],
        "tx_datetime": [at, at, at + pd.Timedelta(seconds=90), at - pd.Timedelta(days=1)],
        "customer_id": [1, 1, 1, 2],
        "amount": [10.0, 20.0, 30.0, 40.0], "risk": [0.0, 0.5, 1.0, 0.25],
    })  # fmt: skip
    history = offline_history(frame, HISTORY)
    assert history.index.tolist() == [5, 2, 9, 4]
    rows = history.to_numpy()
    width = len(HISTORY.features) + 1
    assert np.isnan(rows[1]).all()  # id 2 comes first at the shared instant
    assert rows[0, :width].tolist() == [20.0, 0.5, 0.0]  # id 5 sees id 2, age 0 s
    assert rows[2, : 2 * width].tolist() == [10.0, 0.0, 90.0, 20.0, 0.5, 90.0]
    assert np.isnan(rows[2, 2 * width :]).all()
    assert history.loc[4].isna().all()  # another customer's transactions never count
    only = offline_history(frame, HISTORY, wanted=pd.Series([9]))
    pd.testing.assert_frame_equal(only, history.loc[[9]])


def test_streamed_histories_equal_the_offline_ones_bit_for_bit(state_redis: Settings) -> None:
    """Batches arrive out of time order within themselves; a replay of a batch and a re-score
    after fewer than `kept - length` later transactions give the same bits."""
    frame = _transactions(3_000, 40)
    expected = offline_history(frame, HISTORY)
    state = _state(state_redis)
    by_time = frame.sort_values("tx_datetime", kind="stable")
    batches = [
        by_time.iloc[at : at + 250].sample(frac=1, random_state=at) for at in range(0, 3_000, 250)
    ]
    got = pd.concat([_push(state, batch) for batch in batches])
    pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index(), check_exact=True)
    again = _push(state, batches[-1])  # a replay: the same members, nothing added
    ids = batches[-1]["transaction_id"]
    pd.testing.assert_frame_equal(again, expected.loc[ids], check_exact=True)
    members, index = state.keys(int(frame["customer_id"].iloc[0]))
    held = int(state.client.zcard(members))  # type: ignore[arg-type]
    assert held == state.client.hlen(index.decode())  # the index: no more, no less
    assert HISTORY.kept <= held <= HISTORY.kept + HISTORY.length


def test_a_re_sent_transaction_replaces_its_member(state_redis: Settings) -> None:
    frame = _transactions(40, 1)
    state = _state(state_redis)
    _push(state, frame.iloc[:20])
    moved = frame.iloc[[5]].assign(amount=1234.5)
    _push(state, moved)
    later = frame.iloc[20:]
    whole = pd.concat([frame.iloc[:20].drop(index=5), moved, later])
    expected = offline_history(whole, HISTORY).loc[later["transaction_id"]]
    pd.testing.assert_frame_equal(_push(state, later), expected, check_exact=True)
    assert (expected.filter(like="_amount") == 1234.5).any().any()  # the new amount is read


def test_initialize_loads_the_state_a_stream_from_until_needs(state_redis: Settings) -> None:
    frame = _transactions(2_000, 30)
    until = pd.Timestamp("2026-06-02 13:00", tz="UTC")
    state = _state(state_redis)
    empty = state.empty()
    assert empty is not None and empty.name == HISTORY.name and empty.other_layout_key is None
    _push(state, frame.sort_values("tx_datetime"))  # a state that went further, replayed
    assert state.empty() is None
    assert state.initialize(frame, frame["tx_datetime"].min().to_pydatetime()) == 0  # nothing
    assert state.empty() is not None
    assert _push(state, frame.iloc[:0]).empty
    loaded = state.initialize(frame, until.to_pydatetime())
    assert state.empty() is None
    before = frame[frame["tx_datetime"] < until]
    assert loaded == sum(min(len(g), HISTORY.kept) for _, g in before.groupby("customer_id"))
    after = frame[frame["tx_datetime"] >= until].sort_values("tx_datetime")
    got = pd.concat([_push(state, after.iloc[at : at + 100]) for at in range(0, len(after), 100)])
    pd.testing.assert_frame_equal(
        got, offline_history(frame, HISTORY).loc[got.index], check_exact=True
    )


def test_a_history_of_another_declaration_is_another_layout(state_redis: Settings) -> None:
    """A longer history is laid out under another digest: told at start-up, then removed
    without touching the window state's keys beside it or this layout's."""
    frame = _transactions(500, 20)
    until = pd.Timestamp("2026-06-02 13:00", tz="UTC").to_pydatetime()
    prefix = f"test:{uuid.uuid4().hex}"
    old = HistoryState(redis_server.client(state_redis), HISTORY, prefix)
    old.initialize(frame, until)
    longer = HistoryState(old.client, replace(HISTORY, length=4, kept_factor=6), prefix)
    empty = longer.empty()
    assert empty is not None and empty.other_layout_key is not None
    assert empty.other_layout_key.startswith(old.key_head)
    window_key = f"{prefix}:t2.abcdef:{{{HISTORY.name}:3}}:e".encode()  # not a history's
    old.client.set(window_key, b"kept")
    assert longer.initialize(frame, until) > 0
    old_keys = len(list(old.client.scan_iter(old.key_head + b"*")))
    assert old_keys > 0
    assert longer.remove_other_layouts() == old_keys
    assert not list(old.client.scan_iter(old.key_head + b"*"))
    assert longer.empty() is None and old.empty() is not None
    assert old.client.get(window_key) == b"kept"
    old.client.delete(window_key)
