"""The window aggregations of fraud_model_v1, declared once.

The Spark backfill (training), the streaming updater (serving) and the pure reference all read
these two objects; the Feast feature views take their schemas from them.
"""

from skewless.aggregation import Function, Output, WindowAggregation

LABEL_DELAY_DAYS = 7
"""A transaction's fraud label is known this many days after the transaction."""

CUSTOMER_SPENDING = WindowAggregation(
    name="customer_spending",
    entity="customer",
    entity_key="customer_id",
    windows_days=(1, 7, 30),
    outputs=(
        Output("customer_tx_count_{days}d", Function.COUNT),
        Output("customer_avg_amount_{days}d", Function.MEAN, column="tx_amount"),
    ),
    description="The card holder's spending in the days up to and including the transaction.",
)

TERMINAL_RISK = WindowAggregation(
    name="terminal_risk",
    entity="terminal",
    entity_key="terminal_id",
    windows_days=(1, 7, 30),
    delay_days=LABEL_DELAY_DAYS,
    outputs=(
        Output("terminal_tx_count_{days}d", Function.COUNT),
        Output("terminal_risk_{days}d", Function.MEAN, column="tx_fraud"),
    ),
    description="Share of fraud at the point of sale in windows ending when labels are known.",
)

AGGREGATIONS = (CUSTOMER_SPENDING, TERMINAL_RISK)
