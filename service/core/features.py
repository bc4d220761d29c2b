"""The transaction's features: the one place that names them. Their order is the column order the
model is trained on; the transaction JSON Schema (service/contract/schema.py) is built from this table, so
adding a feature is a line here plus a retrain (docs/adding-a-feature.md)."""

FEATURE_DESCRIPTIONS: dict[str, str] = {
    "Time": "Seconds elapsed since the first transaction of the data set.",
    **{f"V{i}": f"Principal component {i} of the undisclosed transaction features." for i in range(1, 29)},
    "Amount": "Transaction amount in euros.",
}
FEATURES: tuple[str, ...] = tuple(FEATURE_DESCRIPTIONS)
N_FEATURES = len(FEATURES)
