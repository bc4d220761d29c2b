"""The transaction's features, in the column order the model was trained on."""

FEATURES: tuple[str, ...] = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount")
N_FEATURES = len(FEATURES)
