"""The types of the one aggregation declaration that both engines derive from.

Semantics, shared by the Spark backfill, the streaming updater and the pure reference:

- **Event time.** Every window is measured on the event's own timestamp (`event_time`, UTC),
  never on wall time, so a replayed stream gives the same values as the backfill.
- **Order.** Events are ordered by `(event_time, transaction_id)`. "Up to the transaction"
  means every event of the same entity that comes at or before it in that order, itself
  included: two events with the same timestamp are told apart by their id.
- **Window bounds.** For an event at time `t`, a window of `w` days with a delay of `d` days
  covers the events of the same entity whose time `e` satisfies `t - d - w < e <= t - d`:
  the lower bound is exclusive, the upper bound inclusive. With `d = 0` the window ends at
  the event itself (inclusive of it, and of earlier events with the same timestamp; later
  events with the same timestamp are excluded by the order above). With `d > 0` the window
  ends `d` days before the event, and every event at time exactly `t - d` is inside it.
- **What the delay shifts.** A label (`tx_fraud`) is known `d` days after its event. A
  delayed window covers only events whose labels are known at `t`: an event at exactly
  `t - d` has its label arriving exactly at `t`, and counts.
- **Empty windows.** A count over an empty window is 0; a mean over an empty window is the
  declared `empty_value` (0.0 for the reference feature set). No feature is ever null.
- **Values are summed exactly.** A declaration sums its value columns in whole units of
  `10**-decimals` (`decimals`, by default 2: an amount in cents): each value is rounded to
  `decimals` decimals first (`rint(value * 10**decimals)`, half to even), and a mean is
  `sum / 10**decimals / count`. The sums are of integers, exact in float64 while an entity's
  total stays below `2**53` units (9e13 at cents), so they do not depend on the order in which
  an engine adds the events or on what else it holds: every engine gives the same bits, and an
  event scored again after the state moved on gets the same features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from itertools import pairwise


class Function(StrEnum):
    """What an output computes over the events of a window."""

    COUNT = "count"
    MEAN = "mean"


@dataclass(frozen=True)
class Output:
    """One aggregate of a window: `function` over `column` (no column for a count).

    `name` is a template with `{days}` standing for the window length, e.g.
    `customer_avg_amount_{days}d`.
    """

    name: str
    function: Function
    column: str | None = None
    empty_value: float = 0.0

    def __post_init__(self) -> None:
        if "{days}" not in self.name:
            raise ValueError(f"output name {self.name!r} must contain '{{days}}'")
        if (self.function is Function.MEAN) != (self.column is not None):
            raise ValueError(f"output {self.name!r}: a mean needs a column, a count takes none")

    def feature_name(self, days: int) -> str:
        """The feature's name for a window of `days` days."""
        return self.name.format(days=days)


@dataclass(frozen=True)
class WindowAggregation:
    """Sliding event-time windows of one entity's events, declared once for both engines."""

    name: str
    entity: str
    entity_key: str
    outputs: tuple[Output, ...]
    windows_days: tuple[int, ...]
    delay_days: int = 0
    decimals: int = 2
    """Value columns are summed in units of 10**-decimals (see the module doc)."""
    event_time: str = "tx_datetime"
    order_key: str = "transaction_id"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.windows_days or any(days <= 0 for days in self.windows_days):
            raise ValueError(f"{self.name}: windows must be positive numbers of days")
        if self.delay_days < 0:
            raise ValueError(f"{self.name}: the delay cannot be negative")
        if not 0 <= self.decimals <= 9:
            raise ValueError(f"{self.name}: decimals must lie between 0 and 9")

    @property
    def delay(self) -> timedelta:
        return timedelta(days=self.delay_days)

    @property
    def horizon(self) -> timedelta:
        """How far back from an event the widest window reaches (delay included)."""
        return timedelta(days=self.delay_days + max(self.windows_days))

    @property
    def unit_scale(self) -> float:
        """Units of a value column per 1 (its values are summed as `rint(value * unit_scale)`)."""
        return float(10**self.decimals)

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Raw columns the outputs read, in declaration order, without repeats."""
        columns = [output.column for output in self.outputs if output.column is not None]
        return tuple(dict.fromkeys(columns))

    @property
    def features(self) -> tuple[tuple[str, Output], ...]:
        """Every feature this declaration yields with the output computing it, window by window.

        This order is the column order everywhere: offline tables, online rows, the state.
        """
        return tuple(
            (output.feature_name(days), output)
            for days in self.windows_days
            for output in self.outputs
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature this declaration yields, window by window."""
        return tuple(name for name, _ in self.features)

    def window_feature_names(self, windows_days: Iterable[int]) -> tuple[str, ...]:
        """The features of the given windows only, in declaration order."""
        wanted = set(windows_days)
        if unknown := wanted - set(self.windows_days):
            raise ValueError(f"{self.name}: no window of {sorted(unknown)} days is declared")
        return tuple(
            output.feature_name(days)
            for days in self.windows_days
            if days in wanted
            for output in self.outputs
        )

    @property
    def count_features(self) -> tuple[str, ...]:
        """The features that are counts (integers); the others are means."""
        return tuple(name for name, output in self.features if output.function is Function.COUNT)


MAX_HISTORY_LENGTH = 255
"""The streaming state's reply counts a transaction's earlier ones in one byte."""


@dataclass(frozen=True)
class TransactionHistory:
    """An entity's last `length` transactions before each transaction, as the feature vectors
    served to them: what a sequence model reads (a rolling window of events, not of aggregates).

    Semantics, shared by the offline builder and the streaming state (`skewless.history`):

    - **Order.** The entity's transactions are ordered by `(event_time, order_key)`, as the
      windows are. Step `k` (1 to `length`) of a transaction is the `k`-th transaction of the
      same entity before it in that order: one at the same instant with a smaller id counts,
      the transaction itself never does.
    - **Columns.** Step `k` holds that transaction's `features` (the vector it was scored
      with) and its age, the seconds from it to this transaction: `{name}_{k}_{feature}` and
      `{name}_{k}_age_s` (`column_names`, step 1 first).
    - **Padding.** When the entity has fewer than `k` earlier transactions, every column of
      step `k` is NaN, whatever the model does with it.
    - **Bounded state.** The streaming state keeps at least the entity's last `kept`
      transactions (`kept_factor` times `length`) and at most `kept + length`, so a
      transaction scored again after fewer than `kept - length` later ones of its entity gets
      the same history.
    """

    name: str
    entity_key: str
    length: int
    features: tuple[str, ...]
    kept_factor: int = 4
    event_time: str = "tx_datetime"
    order_key: str = "transaction_id"
    description: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.length <= MAX_HISTORY_LENGTH or self.kept_factor < 1:
            raise ValueError(
                f"{self.name}: the length must lie between 1 and {MAX_HISTORY_LENGTH}, the kept "
                "factor be at least 1"
            )
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"{self.name}: needs features, each named once")

    @property
    def kept(self) -> int:
        """Transactions the streaming state keeps per entity."""
        return self.kept_factor * self.length

    def step_columns(self, step: int) -> tuple[str, ...]:
        """Step `step`'s columns: its features in declared order, then its age."""
        return (*(f"{self.name}_{step}_{f}" for f in self.features), f"{self.name}_{step}_age_s")

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every column of the history, step 1 (the latest earlier transaction) first."""
        return tuple(name for step in range(1, self.length + 1) for name in self.step_columns(step))


@dataclass(frozen=True)
class LogRatio:
    """A model input computed inside the model from two served features of the same vector:
    `log(1 + numerator) - log(1 + denominator)`, each feature clamped at 0 first (a missing
    one takes the model's fill value). For instance a transaction's amount against the card's
    average amount: a card whose thief spends five times its usual amounts shows it as one
    number, which a network reading the two amounts apart learns poorly.

    Nothing stores or serves it: the exported graph computes it from the raw features that
    serving already feeds, so training and serving cannot disagree on it.
    """

    name: str
    numerator: str
    denominator: str

    def __post_init__(self) -> None:
        if self.numerator == self.denominator:
            raise ValueError(f"{self.name}: a ratio of a feature to itself is always 0")


@dataclass(frozen=True)
class StateTiles:
    """How the streaming state tiles each entity's events (the backfill does not read it).

    `widths` go coarsest first, each a whole multiple of the next (e.g. a day, an hour, a
    minute). A window is read as whole coarsest tiles plus, at each edge, level by level, the
    finer tiles of the tile the edge falls in, down to the events of the finest tile. A tile
    holding at most `raw_scan_max` events has no finer tiles: it is read from its events.
    """

    widths: tuple[timedelta, ...] = (timedelta(days=1), timedelta(hours=1), timedelta(minutes=1))
    raw_scan_max: int = 16

    def __post_init__(self) -> None:
        micros = [width // timedelta(microseconds=1) for width in self.widths]
        if not micros or min(micros) <= 0:
            raise ValueError("tile widths must be positive")
        if any(coarse % fine for coarse, fine in pairwise(micros)):
            raise ValueError("each tile width must be a whole multiple of the next")
        if self.raw_scan_max < 0:
            raise ValueError("raw_scan_max cannot be negative")


def label_delay_days(declarations: Iterable[WindowAggregation]) -> int:
    """The label delay the declarations state: the delay of those that read labels.

    A window delayed by `d` days covers only events whose labels are known at the event, so
    `d` is when a label becomes known. Declarations that disagree are refused (a stream
    publishes each label once); with no delayed declaration no feature waits for labels: 0.
    """
    delays = {declaration.delay_days for declaration in declarations if declaration.delay_days > 0}
    if len(delays) > 1:
        raise ValueError(f"declarations disagree on the label delay: {sorted(delays)} days")
    return delays.pop() if delays else 0
