"""The tiled streaming state in real Redis: exact against the reference whatever the arrival order,
the replays, the tile path taken or the entity's density, and bounded in memory."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from feature_repo.aggregations import CUSTOMER_SPENDING, TERMINAL_RISK
from skewless.aggregation import StateTiles
from skewless.redis_batch import Client
from skewless.reference import window_aggregates
from skewless.services import redis_server
from skewless.settings import Settings
from skewless.simulator import SimulationParams, simulate
from skewless.stream_state import FUNCTION, StreamState

pytestmark = pytest.mark.integration

DECLARATIONS = (CUSTOMER_SPENDING, TERMINAL_RISK)
DELAY = pd.Timedelta(days=7)
TILE_PATH = StateTiles(raw_scan_max=0)
"""Every top tile read through its finer tiles, never from its events directly."""
CROSSING = StateTiles(raw_scan_max=3)
"""Tiles go over the raw scan limit while the stream runs: their sub-tiles are built then."""
FINE = StateTiles(
    widths=(timedelta(hours=6), timedelta(minutes=30), timedelta(minutes=5), timedelta(seconds=5)),
    raw_scan_max=0,
)
"""Four levels whose top tile does not divide a window's day: edges fall anywhere."""


def _state(settings: Settings, tiles: StateTiles | None = None) -> StreamState:
    client = redis_server.client(settings)
    return StreamState(client, DECLARATIONS, f"test:{uuid.uuid4().hex}", tiles)


def _expected(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([window_aggregates(raw, decl) for decl in DECLARATIONS], axis=1)


def _frame(features: dict[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(
        np.hstack([features[d.name] for d in DECLARATIONS]),
        columns=[n for d in DECLARATIONS for n in d.feature_names],
        index=index,
    )


def _assert_matches(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    for name in got.columns:
        want = expected.loc[got.index, name].to_numpy(dtype=float)
        if "count" in name:
            np.testing.assert_array_equal(got[name].to_numpy(), want, err_msg=name)
        else:
            np.testing.assert_allclose(got[name].to_numpy(), want, rtol=1e-9, err_msg=name)


def _stream(state: StreamState, raw: pd.DataFrame, start: pd.Timestamp, seed: int) -> pd.DataFrame:
    """The worker's order: labels due, then a batch of transactions, batches of random size."""
    stream = raw[raw["tx_datetime"] >= start]
    labels = raw[raw["tx_datetime"] + DELAY >= start].assign(
        label_time=lambda f: f["tx_datetime"] + DELAY
    )
    rng = np.random.default_rng(seed)
    got = []
    position = 0
    while position < len(stream):
        batch = stream.iloc[position : position + int(rng.integers(1, 400))]
        position += len(batch)
        due = labels[labels["label_time"] <= batch["tx_datetime"].max()]
        labels = labels.drop(due.index)
        state.add_labels(due)
        got.append(_frame(state.score_features(batch), batch.index))
    return pd.concat(got)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return simulate(
        SimulationParams(n_customers=120, n_terminals=40, n_days=60, start_date=date(2026, 4, 1))
    ).transactions


@pytest.mark.parametrize(
    "tiles", [TILE_PATH, CROSSING, FINE], ids=["tile-path", "crossing", "four-levels"]
)
def test_streamed_windows_match_the_reference_on_any_tile_path(
    state_redis: Settings, raw: pd.DataFrame, tiles: StateTiles
) -> None:
    start = pd.Timestamp(datetime(2026, 5, 15, tzinfo=UTC))
    state = _state(state_redis, tiles)
    state.initialize(raw, start.to_pydatetime(), label_delay_days=7)
    streamed = _stream(state, raw, start, seed=1)
    assert len(streamed) > 1000
    _assert_matches(streamed, _expected(raw))


def test_labels_read_days_ahead_of_the_transactions_remove_nothing_needed(
    state_redis: Settings, raw: pd.DataFrame
) -> None:
    """A worker started after a replay was published reads every label of the period before
    its first transactions: labels must not move what the state keeps."""
    start = pd.Timestamp(datetime(2026, 5, 15, tzinfo=UTC))
    end = start + pd.Timedelta(days=12)
    state = _state(state_redis)
    state.initialize(raw, start.to_pydatetime(), label_delay_days=7)
    label_times = raw["tx_datetime"] + DELAY
    state.add_labels(raw[(label_times >= start) & (label_times < end)])
    stream = raw[(raw["tx_datetime"] >= start) & (raw["tx_datetime"] < end)]
    batches = [stream.iloc[part] for part in np.array_split(np.arange(len(stream)), 40)]
    got = [_frame(state.score_features(batch), batch.index) for batch in batches]
    _assert_matches(pd.concat(got), _expected(raw))


def test_a_replay_from_an_earlier_time_over_a_state_that_went_further(
    state_redis: Settings, raw: pd.DataFrame
) -> None:
    """`materialize --until` an earlier day on the state of a stream that ran to the end of the
    data (and removed what it no longer needed): the replay's windows are exact again."""
    state = _state(state_redis, CROSSING)
    late = pd.Timestamp(datetime(2026, 5, 1, tzinfo=UTC))
    state.initialize(raw, late.to_pydatetime(), label_delay_days=7)
    _stream(state, raw, late, seed=4)  # to the end of the data: removal ran
    early = pd.Timestamp(datetime(2026, 5, 10, tzinfo=UTC))
    state.initialize(raw, early.to_pydatetime(), label_delay_days=7)
    replayed = _stream(state, raw[raw["tx_datetime"] < early + pd.Timedelta(days=5)], early, 5)
    assert len(replayed) > 300
    _assert_matches(replayed, _expected(raw))


def test_a_replay_from_the_first_day_over_a_state_that_went_further(
    state_redis: Settings, raw: pd.DataFrame
) -> None:
    """The load for a replay from the data's first instant holds no event at all: the entities
    the later stream left in the state start empty again, with complete windows (they kept
    their later watermark and served NaN windows)."""
    state = _state(state_redis)
    state.initialize(raw, raw["tx_datetime"].max().to_pydatetime(), label_delay_days=7)
    first = raw["tx_datetime"].min().floor("D")
    assert state.initialize(raw, first.to_pydatetime(), label_delay_days=7) == 0
    replayed = _stream(state, raw[raw["tx_datetime"] < first + pd.Timedelta(days=3)], first, 6)
    assert len(replayed) > 150 and not replayed.isna().any().any()
    _assert_matches(replayed, _expected(raw))


def test_out_of_order_arrival_gives_the_same_windows(state_redis: Settings) -> None:
    """Transactions and labels arrive shuffled across batches; once all are in, every event's
    windows are those of the reference (each window is read from (time, order), not arrival)."""
    raw = simulate(
        SimulationParams(n_customers=60, n_terminals=20, n_days=20, start_date=date(2026, 4, 1))
    ).transactions
    state = _state(state_redis, TILE_PATH)
    rng = np.random.default_rng(5)
    shuffled = raw.iloc[rng.permutation(len(raw))]
    for part in np.array_split(np.arange(len(shuffled)), 17):
        batch = shuffled.iloc[part]
        state.add_labels(batch)
        state.score_features(batch.drop(columns=["tx_fraud"]), skip=np.ones(len(batch), bool))
    scored = raw.iloc[rng.permutation(len(raw))]
    got = _frame(state.score_features(scored.drop(columns=["tx_fraud"])), scored.index)
    _assert_matches(got, _expected(raw))


def test_replayed_batches_are_never_counted_twice(state_redis: Settings, raw: pd.DataFrame) -> None:
    start = pd.Timestamp(datetime(2026, 5, 25, tzinfo=UTC))
    state = _state(state_redis)
    state.initialize(raw, start.to_pydatetime(), label_delay_days=7)
    state.initialize(raw, start.to_pydatetime(), label_delay_days=7)  # a second load: no-op
    first = _stream(state, raw, start, seed=2)
    again = _stream(state, raw, start, seed=3)  # every label and transaction delivered again
    np.testing.assert_array_equal(again.loc[first.index].to_numpy(), first.to_numpy())
    _assert_matches(first, _expected(raw))
    one = raw[raw["tx_datetime"] >= start].head(1)
    client = state.client
    for agg in state.aggregations:
        events_key = agg.keys(int(one[agg.declaration.entity_key].iloc[0]))[0]
        member = cast(list[bytes], client.zrangebyscore(events_key, "-inf", "+inf"))[0]
        known = member[:16] if agg.fed_by_labels else b""  # (a label needs its transaction)
        for new in (1, 0):  # the function tells whether the member was new
            call = client.fcall(FUNCTION.decode(), 6, *agg.keys(0), agg.config, member, b"", known)
            assert cast(list[Any], call)[0] == new


def test_a_hot_entity_with_ties_at_the_same_microsecond(state_redis: Settings) -> None:
    """One terminal and one customer with ~3 events a minute, many at the same instant."""
    rng = np.random.default_rng(11)
    count = 150_000
    begin = pd.Timestamp(datetime(2026, 4, 1, tzinfo=UTC))
    seconds = np.sort(rng.integers(0, 40 * 86_400, count))
    seconds[1::7] = seconds[0::7][: len(seconds[1::7])]  # same-second neighbours
    raw = pd.DataFrame({
        "transaction_id": rng.permutation(count).astype(np.int64),  # ids not in time order
        "tx_datetime": begin + pd.to_timedelta(np.sort(seconds), unit="s"),
        "customer_id": np.zeros(count, np.int64),
        "terminal_id": np.zeros(count, np.int64),
        "tx_amount": np.round(rng.gamma(2.0, 30.0, count), 2),
        "tx_fraud": (rng.random(count) < 0.05).astype(np.int8),
    }).sort_values(["tx_datetime", "transaction_id"], ignore_index=True)  # fmt: skip
    # (a stream delivers equal timestamps in id order: an event arriving after one it orders
    # before cannot be in that one's window, here as in any streaming engine)
    start = begin + pd.Timedelta(days=38)
    state = _state(state_redis)
    state.initialize(raw, start.to_pydatetime(), label_delay_days=7)
    scored = raw[raw["tx_datetime"] >= start].head(3000)
    label_times = raw["tx_datetime"] + DELAY
    published = start
    got = []
    for part in np.array_split(np.arange(len(scored)), 30):
        batch = scored.iloc[part]
        now = batch["tx_datetime"].max()
        state.add_labels(raw[(label_times >= published) & (label_times <= now)])
        published = now
        got.append(_frame(state.score_features(batch.drop(columns=["tx_fraud"])), batch.index))
    _assert_matches(pd.concat(got), _expected(raw))


def _events(client: Client, key: bytes) -> int:
    return cast(int, client.zcard(key))


def _keys(client: Client, state: StreamState) -> list[bytes]:
    prefix = state.aggregations[0].prefix
    return list(client.scan_iter(match=f"{prefix}:*", count=1000))


def test_old_events_and_tiles_go_in_the_same_call_and_late_ones_are_dropped(
    state_redis: Settings,
) -> None:
    state = StreamState(
        redis_server.client(state_redis),
        (CUSTOMER_SPENDING,),
        f"test:{uuid.uuid4().hex}",
        allowed_lateness=timedelta(days=2),
    )
    client = state.client
    agg = state.aggregations[0]
    begin = pd.Timestamp(datetime(2026, 1, 1, tzinfo=UTC))
    sizes = []
    for day in range(120):
        times = begin + pd.Timedelta(days=day) + pd.to_timedelta(np.arange(0, 86_400, 3_600), "s")
        batch = pd.DataFrame({
            "transaction_id": np.arange(day * 24, day * 24 + 24, dtype=np.int64),
            "tx_datetime": times, "customer_id": np.ones(24, np.int64), "tx_amount": np.ones(24),
        })  # fmt: skip
        features = state.score_features(batch)
        assert features[agg.declaration.name][-1, 4] == min(24 * (day + 1), 24 * 30)
        sizes.append((_events(client, agg.keys(1)[0]), len(_keys(client, state))))
    # retention: horizon 30 days + lateness 2 days, counted in whole days: 32 to 33 days kept
    assert max(size for size, _ in sizes[40:]) == sizes[-1][0] <= 33 * 24
    assert max(keys for _, keys in sizes[40:]) == 4  # events, tiles, sub-tile arrays, index
    # each day over the raw scan limit keeps one array of hours, removed with its day
    assert 0 < cast(int, client.hlen(agg.keys(1)[2].decode())) <= 34
    # an event older than what is kept is dropped, not counted, and its windows are NaN
    late = pd.DataFrame({
        "transaction_id": [10**9], "tx_datetime": [begin + pd.Timedelta(days=60)],
        "customer_id": [1], "tx_amount": [5.0],
    })  # fmt: skip
    assert np.isnan(state.score_features(late)[agg.declaration.name]).all()
    assert _events(client, agg.keys(1)[0]) == sizes[-1][0]
    assert client.hlen(agg.keys(1)[3].decode()) == sizes[-1][0]  # the index: no more, no less


def test_the_function_is_loaded_again_when_redis_lost_it(state_redis: Settings) -> None:
    state = _state(state_redis)
    row = pd.DataFrame({
        "transaction_id": [1], "tx_datetime": [pd.Timestamp("2026-06-01", tz="UTC")],
        "customer_id": [3], "terminal_id": [4], "tx_amount": [10.0],
    })  # fmt: skip
    assert state.score_features(row)["customer_spending"][0, 0] == 1
    state.client.function_flush()
    assert state.score_features(row)["customer_spending"][0, 0] == 1


@pytest.mark.parametrize("year", [1700, 1969, 2250])
def test_windows_at_the_ends_of_the_supported_time_range(state_redis: Settings, year: int) -> None:
    start = pd.Timestamp(datetime(year, 6, 1, tzinfo=UTC))
    times = [start + pd.Timedelta(days=k, seconds=7) for k in range(0, 34, 3)]
    raw = pd.DataFrame({
        "transaction_id": np.arange(len(times), dtype=np.int64), "tx_datetime": times,
        "customer_id": np.full(len(times), 9), "terminal_id": np.full(len(times), 9),
        "tx_amount": np.arange(len(times), dtype=float), "tx_fraud": np.arange(len(times)) % 2,
    })  # fmt: skip
    state = _state(state_redis, TILE_PATH)
    state.add_labels(raw)
    got = _frame(state.score_features(raw.drop(columns=["tx_fraud"])), raw.index)
    _assert_matches(got, _expected(raw))


def test_windows_of_many_entities_do_not_mix(state_redis: Settings) -> None:
    """One customer's huge amounts (inf sums) leave every other customer's windows exact."""
    state = _state(state_redis, TILE_PATH)
    day = pd.Timedelta(days=1)
    start = pd.Timestamp(datetime(2026, 9, 1, tzinfo=UTC))
    rows = []
    for customer in range(1, 6):
        for k in range(5):
            amount = 1e308 if customer == 1 else 10.0 * customer + k
            rows.append((customer * 10 + k, start + k * day, customer, amount))
    raw = pd.DataFrame(rows, columns=["transaction_id", "tx_datetime", "customer_id", "tx_amount"])
    raw["terminal_id"] = raw["customer_id"]
    got = state.score_features(raw)["customer_spending"]
    assert not np.isfinite(got[4, 5])
    np.testing.assert_allclose(got[5:, 4], np.tile([1, 2, 3, 4, 5], 4))
    np.testing.assert_allclose(got[9::5, 5], [22.0, 32.0, 42.0, 52.0])


def test_a_resent_transaction_or_a_corrected_label_replaces_never_adds(
    state_redis: Settings, raw: pd.DataFrame
) -> None:
    """Mid-stream, transactions come again with new amounts or times and labels come again
    flipped: later windows equal the reference over the corrected data, as if each transaction
    had only ever come in its last version."""
    start = pd.Timestamp(datetime(2026, 5, 10, tzinfo=UTC))
    mid = start + pd.Timedelta(days=10)
    rng = np.random.default_rng(21)
    state = _state(state_redis, CROSSING)
    state.initialize(raw, start.to_pydatetime(), label_delay_days=7)
    _stream(state, raw[raw["tx_datetime"] < mid], start, seed=6)

    corrected = raw.copy()
    recent = corrected.index[
        (corrected["tx_datetime"] >= mid - pd.Timedelta(days=6)) & (corrected["tx_datetime"] < mid)
    ]
    amounts = rng.choice(recent, 60, replace=False)
    corrected.loc[amounts, "tx_amount"] = corrected.loc[amounts, "tx_amount"] * 3 + 1
    labels_known = corrected.index[
        (corrected["tx_datetime"] >= mid - pd.Timedelta(days=9))
        & (corrected["tx_datetime"] + DELAY < mid)
    ]
    moved = rng.choice(labels_known, 20, replace=False)
    corrected.loc[moved, "tx_datetime"] -= pd.Timedelta(hours=30)  # their labels move too
    labelled = corrected.index[
        (corrected["tx_datetime"] >= start - pd.Timedelta(days=20))
        & (corrected["tx_datetime"] + DELAY < mid)
    ]
    flipped = rng.choice(labelled, 60, replace=False)
    corrected.loc[flipped, "tx_fraud"] = 1 - corrected.loc[flipped, "tx_fraud"]
    assert (raw.loc[moved, "tx_datetime"] + DELAY < mid).all()  # (their labels were counted)

    resent = corrected.loc[np.concatenate([amounts, moved])]
    state.score_features(resent.drop(columns=["tx_fraud"]))  # (scores of the new versions)
    state.add_labels(corrected.loc[flipped])
    state.add_labels(corrected.loc[flipped])  # a correction delivered twice counts once

    # (from a day before `mid`: what that day delivered comes again, and changes nothing)
    later = _stream(state, corrected, mid - pd.Timedelta(days=1), seed=7)
    assert len(later) > 500
    _assert_matches(later, _expected(corrected))
    assert state.take_refused() == []
    with pytest.raises(AssertionError):  # (the corrections do change later windows)
        _assert_matches(later, _expected(raw))


def test_a_label_counts_only_for_a_transaction_its_entity_knows(
    state_redis: Settings, raw: pd.DataFrame
) -> None:
    """A label naming no transaction (or another terminal's) never counts: it waits for its
    transaction, and is refused once older than the state keeps; a label read before its
    transaction counts once the transaction comes."""
    start = pd.Timestamp(datetime(2026, 5, 10, tzinfo=UTC))
    state = _state(state_redis)
    state.initialize(raw, start.to_pydatetime(), label_delay_days=7)
    terminals = raw["terminal_id"].unique()
    days = [pd.Timedelta(days=d) for d in (-60, 1, 3)]
    bogus = pd.DataFrame({
        "transaction_id": np.arange(10**9, 10**9 + 3, dtype=np.int64),
        "tx_datetime": [start + day for day in days],
        "customer_id": np.zeros(3, np.int64),
        "terminal_id": terminals[:3],
        "tx_fraud": np.ones(3, np.int8),
    })  # fmt: skip
    elsewhere = raw[raw["tx_datetime"] >= start].head(5).copy()  # real ids, wrong terminal
    elsewhere["terminal_id"] = next(t for t in terminals if t not in set(elsewhere["terminal_id"]))
    elsewhere["tx_fraud"] = 1
    state.add_labels(pd.concat([bogus, elsewhere]))
    refused = state.take_refused()
    assert [(r.transaction_id, r.entity_id) for r in refused] == [(10**9, terminals[0])]
    assert refused[0].values == {"tx_fraud": 1.0}
    streamed = _stream(state, raw, start, seed=8)
    _assert_matches(streamed, _expected(raw))  # none of them counted
    assert state.take_refused() == []  # the recent ones still wait: the stream is too short
    pending = [
        cast(int, state.client.zcard(agg.keys(int(terminal))[5]))
        for agg in state.aggregations[1:]
        for terminal in {*terminals[1:3], *elsewhere["terminal_id"]}
    ]
    assert sum(pending) == 2 + 5


def test_a_version_sent_too_late_to_be_kept_takes_the_earlier_one_with_it(
    state_redis: Settings,
) -> None:
    """A transaction sent again with a time older than the state keeps is dropped, and the
    version counted before is not its last one either: it leaves the windows."""
    state = StreamState(
        redis_server.client(state_redis),
        (CUSTOMER_SPENDING,),
        f"test:{uuid.uuid4().hex}",
        allowed_lateness=timedelta(days=2),
    )
    begin = pd.Timestamp(datetime(2026, 1, 1, 12, tzinfo=UTC))

    def one(transaction_id: int, days: float) -> pd.DataFrame:
        return pd.DataFrame({
            "transaction_id": [transaction_id], "tx_datetime": [begin + pd.Timedelta(days=days)],
            "customer_id": [1], "tx_amount": [10.0 + transaction_id],
        })  # fmt: skip

    for day in range(39):  # one a day; at day 38 the state keeps from day 6 on
        state.score_features(one(day, day))
    state.score_features(one(10, 5.0))  # day 10's transaction, now dated before day 6
    windows = state.score_features(one(100, 38.1))["customer_spending"][0]
    # 30 days: (8.1, 38.1] holds days 9 to 38 and the new one, not the transaction of day 10
    assert windows[4] == 30
    assert windows[5] == pytest.approx((sum(range(9, 39)) - 10 + 100 + 10 * 30) / 30)


def test_a_re_score_gives_the_same_bits_whatever_the_state_took_in_since(
    state_redis: Settings,
) -> None:
    """At-least-once delivery scores an event again after the state moved on: later events in
    the same tiles, labels, sub-tiles built, old days removed. Sums are exact, so the windows
    are bit for bit those of the first score (and of the reference)."""
    rng = np.random.default_rng(17)
    count = 60_000
    begin = pd.Timestamp(datetime(2026, 4, 1, tzinfo=UTC))
    seconds = np.sort(rng.integers(0, 50 * 86_400, count))
    raw = pd.DataFrame({
        "transaction_id": rng.permutation(count).astype(np.int64),
        "tx_datetime": begin + pd.to_timedelta(seconds, unit="s"),
        "customer_id": rng.integers(0, 3, count),
        "terminal_id": rng.integers(0, 3, count),
        "tx_amount": np.round(rng.gamma(2.0, 30.0, count) * rng.choice([1, 1e-2, 1e3], count), 2),
        "tx_fraud": (rng.random(count) < 0.05).astype(np.int8),
    }).sort_values(["tx_datetime", "transaction_id"], ignore_index=True)  # fmt: skip
    state = _state(state_redis, CROSSING)
    state.initialize(raw, (begin + pd.Timedelta(days=37)).to_pydatetime(), label_delay_days=7)
    label_times = raw["tx_datetime"] + DELAY
    published = begin + pd.Timedelta(days=37)

    def stream(events: pd.DataFrame, computed: bool) -> pd.DataFrame:
        nonlocal published
        now = events["tx_datetime"].max()
        state.add_labels(raw[(label_times > published) & (label_times <= now)])
        published = max(published, now)
        skip = None if computed else np.ones(len(events), bool)
        return _frame(state.score_features(events.drop(columns=["tx_fraud"]), skip), events.index)

    def kept_old() -> list[int]:
        """Customer 0's events before day 10 and terminal 0's before day 5 (what a stream at
        day 50 no longer keeps: horizon plus lateness, 37 and 44 days)."""
        kept = []
        for agg, day in zip(state.aggregations, (10, 5), strict=True):
            bound = (begin + pd.Timedelta(days=day)).value // 1000
            kept.append(cast(int, state.client.zcount(agg.keys(0)[0], "-inf", f"({bound}")))
        return kept

    rescored_from = begin + pd.Timedelta(days=44)
    before = raw[(raw["tx_datetime"] >= published) & (raw["tx_datetime"] < rescored_from)]
    for part in np.array_split(np.arange(len(before)), 10):  # days 37 to 44
        stream(before.iloc[part], computed=False)
    later = raw[raw["tx_datetime"] >= rescored_from]
    first = stream(later.head(400), computed=True)
    assert min(kept_old()) > 0
    for part in np.array_split(np.arange(400, len(later)), 20):  # to 6 days after the batch
        stream(later.iloc[part], computed=True)  # (a terminal's time moves with its scores)
    assert kept_old() == [0, 0]  # (days removed: the running aggregates start later now)
    again = stream(later.head(400), computed=True)
    assert not again.isna().to_numpy().any()
    np.testing.assert_array_equal(again.to_numpy(), first.to_numpy())
    expected = _expected(raw).loc[again.index, again.columns].to_numpy(dtype=float)
    np.testing.assert_array_equal(again.to_numpy(), expected)  # (the reference's bits too)


def test_a_state_never_loaded_or_loaded_in_another_layout_is_told_apart(
    state_redis: Settings, raw: pd.DataFrame
) -> None:
    """What the worker logs at start-up: a declaration without a key in this layout, and
    whether another layout's keys (other tiles here; an older version's alike) are there."""
    client = redis_server.client(state_redis)
    prefix = f"test:{uuid.uuid4().hex}"
    state = StreamState(client, DECLARATIONS, prefix)
    never = state.empty()
    assert [empty.name for empty in never] == [decl.name for decl in DECLARATIONS]
    assert all(empty.other_layout_key is None for empty in never)
    assert "`skewless materialize`" in never[0].message()
    assert "another layout" not in never[0].message()

    state.initialize(raw, datetime(2026, 5, 15, tzinfo=UTC), label_delay_days=7)
    assert state.empty() == []
    assert StreamState(client, DECLARATIONS, f"{prefix}x").empty() != []  # prefixes apart

    relaid = StreamState(client, DECLARATIONS, prefix, FINE)
    moved = relaid.empty()
    assert [empty.name for empty in moved] == [decl.name for decl in DECLARATIONS]
    for empty, old, new in zip(moved, state.aggregations, relaid.aggregations, strict=True):
        assert empty.head == new.key_head != old.key_head
        assert empty.other_layout_key is not None
        assert empty.other_layout_key.startswith(old.key_head), empty.other_layout_key
        assert "another layout" in empty.message()
    relaid.initialize(raw, datetime(2026, 5, 15, tzinfo=UTC), label_delay_days=7)
    assert relaid.empty() == []

    # Removing the other layout's keys (`skewless materialize --remove-other-layouts`) leaves
    # this layout's, another prefix's, and a key under the prefix of no layout's shape.
    old_keys = sum(len(list(client.scan_iter(old.key_head + b"*"))) for old in state.aggregations)
    new_keys = sum(len(list(client.scan_iter(new.key_head + b"*"))) for new in relaid.aggregations)
    assert old_keys > 0 and new_keys > 0
    other_prefix = StreamState(client, DECLARATIONS, f"{prefix}x")
    other_prefix.initialize(raw, datetime(2026, 5, 15, tzinfo=UTC), label_delay_days=7)
    unshaped = f"{prefix}:notes:{{{DECLARATIONS[0].name}:7}}".encode()
    client.set(unshaped, b"kept")
    assert relaid.remove_other_layouts() == old_keys
    assert all(not list(client.scan_iter(old.key_head + b"*")) for old in state.aggregations)
    assert relaid.empty() == [] and other_prefix.empty() == []
    assert sum(len(list(client.scan_iter(new.key_head + b"*"))) for new in relaid.aggregations) == (
        new_keys
    )
    assert client.get(unshaped) == b"kept"
    gone = state.empty()  # the old layout's view: empty, the new layout's keys beside it
    assert [empty.name for empty in gone] == [decl.name for decl in DECLARATIONS]
    for empty, new in zip(gone, relaid.aggregations, strict=True):
        assert empty.other_layout_key is not None
        assert empty.other_layout_key.startswith(new.key_head)
    assert relaid.remove_other_layouts() == 0
    client.delete(unshaped)

    foreign = f"test:{uuid.uuid4().hex}"  # a key of some older layout, not even UTF-8
    old_key = f"{foreign}:t1.00ff00:{{{DECLARATIONS[0].name}:7}}:".encode() + b"\xff"
    client.set(old_key, b"1")
    foreign_state = StreamState(client, DECLARATIONS, foreign)
    [first, *_] = foreign_state.empty()
    assert first.other_layout_key == old_key
    assert repr(old_key) in first.message()
    assert "--remove-other-layouts" in first.message()
    assert foreign_state.remove_other_layouts() == 1
    assert not client.exists(old_key)
