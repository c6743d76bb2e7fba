"""Sources: the offline feature tables the Spark backfill writes, each with its push source.

The streaming worker pushes to the push sources; both name the same batch table, so the two
paths of a feature view share one schema.
"""

from aggregations import CUSTOMER_SPENDING, TERMINAL_RISK
from feast import PushSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from skewless.feature_store import offline_table_uri

customer_spending_table = SparkSource(
    name="customer_spending_table",
    path=offline_table_uri(CUSTOMER_SPENDING.name),
    file_format="parquet",
    timestamp_field=CUSTOMER_SPENDING.event_time,
    description=CUSTOMER_SPENDING.description,
)

terminal_risk_table = SparkSource(
    name="terminal_risk_table",
    path=offline_table_uri(TERMINAL_RISK.name),
    file_format="parquet",
    timestamp_field=TERMINAL_RISK.event_time,
    description=TERMINAL_RISK.description,
)

customer_spending_push = PushSource(
    name="customer_spending_push", batch_source=customer_spending_table
)

terminal_risk_push = PushSource(name="terminal_risk_push", batch_source=terminal_risk_table)
