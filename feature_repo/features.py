"""Feature views: per-transaction flags (on demand) and the two window aggregations.

The window views take their schemas from the declarations in `aggregations.py`; nothing here
restates a window, a function or a delay.
"""

from datetime import timedelta

import pandas as pd
from aggregations import CUSTOMER_SPENDING, TERMINAL_RISK
from data_sources import customer_spending_push, terminal_risk_push
from entities import customer, terminal
from feast import FeatureView, Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, UnixTimestamp

from skewless.aggregation import WindowAggregation


def _schema(declaration: WindowAggregation) -> list[Field]:
    counts = declaration.count_features
    return [
        Field(name=name, dtype=Int64 if name in counts else Float64)
        for name in declaration.feature_names
    ]


# A window row describes its entity at the instant of its own transaction only: one second
# later the windows have moved. So a row is never served offline past one second (the
# smallest TTL Feast keeps): Feast's point-in-time join of a transaction finds a row of that
# second instead of pairing it with the entity's whole history. skewless's own offline reads
# (`skewless.offline_store`) go further and join each transaction to its own row by id, since
# two transactions of one entity in the same second share the join's (key, time). Online, the
# worker computes windows from events at each transaction's time; Feast's online reads do not
# apply TTL.
ROW_TTL = timedelta(seconds=1)

customer_spending = FeatureView(
    name=CUSTOMER_SPENDING.name,
    entities=[customer],
    ttl=ROW_TTL,
    schema=_schema(CUSTOMER_SPENDING),
    source=customer_spending_push,
    online=True,
    description=CUSTOMER_SPENDING.description,
)

terminal_risk = FeatureView(
    name=TERMINAL_RISK.name,
    entities=[terminal],
    ttl=ROW_TTL,
    schema=_schema(TERMINAL_RISK),
    source=terminal_risk_push,
    online=True,
    description=TERMINAL_RISK.description,
)

transaction_request = RequestSource(
    name="transaction_request",
    schema=[Field(name="tx_amount", dtype=Float64), Field(name="tx_datetime", dtype=UnixTimestamp)],
)


@on_demand_feature_view(
    sources=[transaction_request],
    schema=[
        Field(name="amount", dtype=Float64),
        Field(name="during_weekend", dtype=Int64),
        Field(name="during_night", dtype=Int64),
    ],
    mode="pandas",
    description="Amount, weekend flag and night flag of the transaction itself.",
)
def transaction_features(request: pd.DataFrame) -> pd.DataFrame:
    # Feast rebuilds this function from its source text: imports stay inside it.
    from skewless.transaction_features import transaction_features as compute

    return compute(request)
