"""Vectorised card-transaction simulator in the canonical raw schema.

Modelled on the public simulator of the Fraud Detection Handbook (Le Borgne et al.): customers
and terminals placed on a 100 x 100 square, customers paying only at terminals within a radius,
Poisson daily activity, daytime-heavy timestamps and three fraud scenarios. Every draw is made
with numpy across all customers and days at once; no Python loop runs per transaction, customer
or day.

Fraud attribution: a transaction hit by several scenarios is counted once, under the first
scenario in the order amount_over_220, compromised_terminal, compromised_customer. Scenario 1 is
judged on the amount as drawn, before the scenario-3 multiplication (as in the original, where
scenario 1 runs first); a transaction selected by scenario 3 has its amount multiplied once even
when two compromise windows of the same customer overlap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

SECONDS_PER_DAY = 86_400
GRID_SIZE = 100.0
SCENARIOS = ("amount_over_220", "compromised_terminal", "compromised_customer")
COLUMNS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud")


@dataclass(frozen=True)
class SimulationParams:
    """Size, seed and fraud-scenario knobs of one simulation run."""

    n_customers: int = 5000
    n_terminals: int = 10000
    start_date: date = date(2026, 4, 1)
    n_days: int = 183
    radius: float = 5.0
    seed: int = 42
    compromised_terminals_per_day: int = 2
    compromised_terminal_days: int = 28
    compromised_customers_per_day: int = 3
    compromised_customer_days: int = 14
    compromised_customer_share: float = 1 / 3
    compromised_amount_factor: float = 5.0
    fraud_amount_threshold: float = 220.0
    time_of_day_mean_hours: float = 12.0
    time_of_day_std_hours: float = 5.0

    def __post_init__(self) -> None:
        if min(self.n_customers, self.n_terminals, self.n_days) < 1:
            raise ValueError("n_customers, n_terminals and n_days must be positive")
        if self.radius <= 0 or self.time_of_day_std_hours <= 0:
            raise ValueError("radius and time_of_day_std_hours must be positive")
        if not 0 <= self.time_of_day_mean_hours < 24:
            raise ValueError("time_of_day_mean_hours must lie in [0, 24)")
        if not 0 <= self.compromised_terminals_per_day <= self.n_terminals:
            raise ValueError("compromised_terminals_per_day must lie in [0, n_terminals]")
        if not 0 <= self.compromised_customers_per_day <= self.n_customers:
            raise ValueError("compromised_customers_per_day must lie in [0, n_customers]")
        if not 0 <= self.compromised_customer_share <= 1:
            raise ValueError("compromised_customer_share must lie in [0, 1]")


@dataclass(frozen=True)
class Profiles:
    """Customer and terminal profiles; ids are the array positions (0..n-1).

    The terminals customer ``c`` may use are
    ``neighbour_terminals[neighbour_offsets[c]:neighbour_offsets[c + 1]]`` (CSR layout).
    """

    customer_xy: FloatArray
    mean_amount: FloatArray
    std_amount: FloatArray
    mean_nb_tx_per_day: FloatArray
    terminal_xy: FloatArray
    neighbour_offsets: IntArray
    neighbour_terminals: IntArray

    def terminals_of(self, customer_id: int) -> IntArray:
        """Return the sorted terminal ids within the radius of one customer."""
        start, stop = self.neighbour_offsets[customer_id : customer_id + 2]
        return self.neighbour_terminals[start:stop]


@dataclass(frozen=True)
class SimulationResult:
    """The parameters, the transactions in the canonical schema, what made each fraud, and the
    compromised terminals.

    `scenario` holds one code per row of `transactions`: 0 for a genuine transaction, else the
    1-based index into `SCENARIOS` of the scenario it is counted under. `terminal_compromises`
    has one row per compromise: `terminal_id`, and `start` and `end` (UTC midnights, end
    excluded) of the days every transaction of the terminal is a fraud. Neither is part of
    the canonical schema: a real data set carries no such truth.
    """

    params: SimulationParams
    transactions: pd.DataFrame
    scenario: npt.NDArray[np.int8]
    terminal_compromises: pd.DataFrame

    @property
    def fraud_by_scenario(self) -> dict[str, int]:
        """Frauds counted under each scenario."""
        return count_by_scenario(self.scenario)

    @property
    def fraud_rate(self) -> float:
        """Share of transactions labelled fraudulent (0.0 for an empty run)."""
        n = len(self.transactions)
        return float(self.transactions["tx_fraud"].sum()) / n if n else 0.0


def count_by_scenario(codes: npt.NDArray[np.int8]) -> dict[str, int]:
    """How many of `codes` (`SimulationResult.scenario`'s) name each scenario."""
    counts = np.bincount(codes, minlength=len(SCENARIOS) + 1)[1:]
    return {name: int(n) for name, n in zip(SCENARIOS, counts, strict=True)}


def _generators(seed: int) -> list[np.random.Generator]:
    """Independent streams (profiles, transactions, terminal and customer compromises)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _terminals_within_radius(
    customer_xy: FloatArray, terminal_xy: FloatArray, radius: float
) -> tuple[IntArray, IntArray]:
    """CSR (offsets, terminal ids sorted per customer) of terminals within ``radius``."""
    pairs = cKDTree(customer_xy).sparse_distance_matrix(
        cKDTree(terminal_xy), radius, output_type="ndarray"
    )
    customers = pairs["i"].astype(np.int64)
    terminals = pairs["j"].astype(np.int64)
    order = np.lexsort((terminals, customers))
    counts = np.bincount(customers, minlength=len(customer_xy))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return offsets, terminals[order]


def generate_profiles(params: SimulationParams) -> Profiles:
    """Draw customer and terminal profiles and the customer -> nearby terminals index."""
    rng = _generators(params.seed)[0]
    customer_xy = rng.uniform(0, GRID_SIZE, (params.n_customers, 2))
    mean_amount = rng.uniform(5, 100, params.n_customers)
    tx_per_day = rng.uniform(0, 4, params.n_customers)
    terminal_xy = rng.uniform(0, GRID_SIZE, (params.n_terminals, 2))
    nearby = _terminals_within_radius(customer_xy, terminal_xy, params.radius)
    return Profiles(customer_xy, mean_amount, mean_amount / 2, tx_per_day, terminal_xy, *nearby)


def _draw_time_of_day(n: int, mean_s: float, std_s: float, rng: np.random.Generator) -> IntArray:
    """Whole seconds after midnight, normal(mean_s, std_s) redrawn until inside the day."""
    seconds = rng.normal(mean_s, std_s, n)
    outside = np.flatnonzero((seconds < 0) | (seconds >= SECONDS_PER_DAY))
    while outside.size:  # one pass per redraw round (a handful), not per transaction
        seconds[outside] = rng.normal(mean_s, std_s, outside.size)
        outside = outside[(seconds[outside] < 0) | (seconds[outside] >= SECONDS_PER_DAY)]
    return seconds.astype(np.int64)


def _draw_amounts(mean: FloatArray, std: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Normal amounts rounded to cents; negative draws replaced by uniform(0, 2 * mean)."""
    amounts = rng.normal(mean, std)
    negative = amounts < 0
    amounts[negative] = rng.uniform(0, 2 * mean[negative])
    return np.round(amounts, 2)


def _daily_draws(n_days: int, population: int, per_day: int, rng: np.random.Generator) -> IntArray:
    """For each day, ``per_day`` distinct ids out of ``population`` (shape n_days x per_day)."""
    if per_day == 0:
        return np.empty((n_days, 0), dtype=np.int64)
    keys = rng.random((n_days, population))
    return np.argpartition(keys, per_day - 1, axis=1)[:, :per_day].astype(np.int64)


@dataclass(frozen=True)
class _Draws:
    """Raw transactions in generation order (customer-major, then day)."""

    customer: IntArray
    day: IntArray
    second: IntArray
    terminal: IntArray
    amount: FloatArray
    cell_start: IntArray  # first row of each (customer, day) cell, plus the total at the end


def _draw_transactions(
    profiles: Profiles, params: SimulationParams, rng: np.random.Generator
) -> _Draws:
    """Poisson counts per (customer, day), then time, amount and terminal of every transaction."""
    reachable = np.diff(profiles.neighbour_offsets) > 0
    daily_rate = np.where(reachable, profiles.mean_nb_tx_per_day, 0.0)
    counts = rng.poisson(daily_rate[:, None], (params.n_customers, params.n_days)).ravel()
    cell = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    customer, day = np.divmod(cell, params.n_days)
    mean_s, std_s = params.time_of_day_mean_hours * 3600, params.time_of_day_std_hours * 3600
    second = _draw_time_of_day(cell.size, mean_s, std_s, rng)
    amount = _draw_amounts(profiles.mean_amount[customer], profiles.std_amount[customer], rng)
    first = profiles.neighbour_offsets[customer]
    degree = profiles.neighbour_offsets[customer + 1] - first
    terminal = profiles.neighbour_terminals[first + rng.integers(0, degree)]
    cell_start = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return _Draws(customer, day, second, terminal, amount, cell_start)


@dataclass(frozen=True)
class _TerminalCompromises:
    """Scenario 2's draws: the terminal and the first and last (excluded) day of each."""

    terminal: IntArray
    start_day: IntArray
    stop_day: IntArray


def _terminal_compromises(
    params: SimulationParams, rng: np.random.Generator
) -> _TerminalCompromises:
    """Scenario 2: every day, terminals compromised for the next days (cut at the last day)."""
    n_days = params.n_days
    picked = _daily_draws(n_days, params.n_terminals, params.compromised_terminals_per_day, rng)
    start = np.repeat(np.arange(n_days), picked.shape[1])
    stop = np.minimum(start + params.compromised_terminal_days, n_days)
    return _TerminalCompromises(picked.ravel(), start, stop)


def _compromised_terminal_hits(
    draws: _Draws, compromises: _TerminalCompromises, params: SimulationParams
) -> BoolArray:
    """Scenario 2: True where the terminal was compromised on the transaction's day."""
    n_days, n_terminals = params.n_days, params.n_terminals
    change = np.zeros((n_terminals, n_days + 1), dtype=np.int32)
    np.add.at(change, (compromises.terminal, compromises.start_day), 1)
    np.add.at(change, (compromises.terminal, compromises.stop_day), -1)
    compromised = np.cumsum(change, axis=1)[:, :n_days] > 0
    hits: BoolArray = compromised[draws.terminal, draws.day]
    return hits


def _compromised_customer_picks(
    draws: _Draws, params: SimulationParams, rng: np.random.Generator
) -> IntArray:
    """Scenario 3: sorted indices (generation order) of the transactions turned into fraud.

    Transactions are generated customer-major then day, so one compromise (customer c from day d
    on) owns a contiguous slice of rows; ``floor(share * size)`` rows of it are drawn at random.
    """
    n_days = params.n_days
    picked = _daily_draws(n_days, params.n_customers, params.compromised_customers_per_day, rng)
    cell = picked.ravel() * n_days
    start = np.repeat(np.arange(n_days), picked.shape[1])
    lo = draws.cell_start[cell + start]
    hi = draws.cell_start[cell + np.minimum(start + params.compromised_customer_days, n_days)]
    sizes = hi - lo
    group = np.repeat(np.arange(sizes.size), sizes)
    rank = np.arange(group.size) - (np.cumsum(sizes) - sizes)[group]
    shuffled = (lo[group] + rank)[np.lexsort((rng.random(group.size), group))]
    n_picked = np.floor(sizes * params.compromised_customer_share + 1e-9).astype(np.int64)
    return np.unique(shuffled[rank < n_picked[group]])


def _label_frauds(
    draws: _Draws,
    terminals: _TerminalCompromises,
    params: SimulationParams,
    rng: np.random.Generator,
) -> tuple[FloatArray, npt.NDArray[np.int8]]:
    """Final amounts and scenario codes (0 genuine, else 1-based index into SCENARIOS)."""
    amount = draws.amount.copy()
    scenario = np.zeros(amount.size, dtype=np.int8)
    scenario[amount > params.fraud_amount_threshold] = 1
    scenario[(scenario == 0) & _compromised_terminal_hits(draws, terminals, params)] = 2
    picks = _compromised_customer_picks(draws, params, rng)
    amount[picks] = np.round(amount[picks] * params.compromised_amount_factor, 2)
    scenario[picks[scenario[picks] == 0]] = 3
    return amount, scenario


def _midnight(start_date: date) -> int:
    return int(datetime(start_date.year, start_date.month, start_date.day, tzinfo=UTC).timestamp())


def _stamps(seconds: IntArray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex((seconds * 1_000_000).astype("datetime64[us]")).tz_localize("UTC")


def _to_frame(
    start_date: date, draws: _Draws, amount: FloatArray, scenario: npt.NDArray[np.int8]
) -> tuple[pd.DataFrame, npt.NDArray[np.int8]]:
    """Assemble the canonical frame, sorted by time (ids follow that order), and the scenario
    codes in its row order."""
    seconds = _midnight(start_date) + draws.day * SECONDS_PER_DAY + draws.second
    order = np.argsort(seconds, kind="stable")
    frame = pd.DataFrame(
        {
            "transaction_id": np.arange(order.size, dtype=np.int64),
            "tx_datetime": _stamps(seconds[order]),
            "customer_id": draws.customer[order],
            "terminal_id": draws.terminal[order],
            "tx_amount": amount[order],
            "tx_fraud": (scenario[order] > 0).astype(np.int8),
        },
        columns=list(COLUMNS),
    )
    return frame, scenario[order]


def _compromise_frame(start_date: date, compromises: _TerminalCompromises) -> pd.DataFrame:
    midnight = _midnight(start_date)
    return pd.DataFrame(
        {
            "terminal_id": compromises.terminal,
            "start": _stamps(midnight + compromises.start_day * SECONDS_PER_DAY),
            "end": _stamps(midnight + compromises.stop_day * SECONDS_PER_DAY),
        }
    )


def simulate(params: SimulationParams) -> SimulationResult:
    """Simulate ``params.n_days`` of transactions with the three fraud scenarios."""
    profiles = generate_profiles(params)
    _, rng_tx, rng_terminals, rng_customers = _generators(params.seed)
    draws = _draw_transactions(profiles, params, rng_tx)
    terminals = _terminal_compromises(params, rng_terminals)
    amount, scenario = _label_frauds(draws, terminals, params, rng_customers)
    frame, scenario = _to_frame(params.start_date, draws, amount, scenario)
    compromises = _compromise_frame(params.start_date, terminals)
    result = SimulationResult(params, frame, scenario, compromises)
    logger.info("simulated %d transactions, frauds %s", len(frame), result.fraud_by_scenario)
    return result
