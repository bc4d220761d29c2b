"""The transaction's features: the one place that names them and bounds their values. Their order is
the column order the model is trained on; the transaction JSON Schema (service/contract/schema.py) is
built from this table, so adding a feature is a line here plus a retrain (docs/extending.md)."""

import math

FEATURE_DESCRIPTIONS: dict[str, str] = {
    "Time": "Seconds elapsed since the first transaction of the data set.",
    **{f"V{i}": f"Principal component {i} of the undisclosed transaction features." for i in range(1, 29)},
    "Amount": "Transaction amount in euros.",
}
FEATURES: tuple[str, ...] = tuple(FEATURE_DESCRIPTIONS)
N_FEATURES = len(FEATURES)

# The model compares in float32 (sklearn casts its input so): a value beyond float32's largest has
# no place in it. Every path that reads a feature refuses |x| > FLOAT32_MAX, x read as a double.
FLOAT32_MAX = float.fromhex("0x1.fffffep+127")  # numpy.finfo(numpy.float32).max
# A number is read as its nearest double (RFC 8259 section 6; orjson, Arrow and numpy do so), so the
# numbers within range are those up to halfway to the next double: a tie rounds to FLOAT32_MAX,
# whose significand is even. The JSON Schema states this exact bound, so that a validator that
# compares numbers exactly (jsonschema does, for integers) decides as the service does.
FEATURE_BOUND = int(FLOAT32_MAX) + int(math.ulp(FLOAT32_MAX)) // 2
