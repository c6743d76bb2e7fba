"""Feature services: the versioned contract between training and serving."""

from feast import FeatureService
from features import customer_spending, terminal_risk, transaction_features

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[transaction_features, customer_spending, terminal_risk],
    description="Reference fraud feature set: 3 transaction, 6 customer and 6 terminal features.",
)
