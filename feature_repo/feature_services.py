"""Feature services: the versioned contract between training and serving."""

from aggregations import CUSTOMER_HISTORY
from feast import FeatureService
from features import customer_spending, terminal_risk, transaction_features

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[transaction_features, customer_spending, terminal_risk],
    description=(
        "Reference fraud feature set: 3 transaction, 6 customer and 14 terminal features; "
        "sequence models also read the customer's last 5 transactions (customer_history)."
    ),
    tags={
        "transaction_history": CUSTOMER_HISTORY.name,
        "history_length": str(CUSTOMER_HISTORY.length),
    },
)
