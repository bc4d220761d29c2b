"""The prediction log's record: one row per scored transaction. Its columns are named and typed here
and nowhere else; the Parquet files' schema, the spool frames' decoding and the docs' table derive
from COLUMNS. Changes are additive only: a new column goes at the end with a new SCHEMA_VERSION, so
that files of every version read together as one table (missing columns are null)."""

from __future__ import annotations

from typing import Any, NamedTuple

from service.core.features import FEATURE_DESCRIPTIONS

SCHEMA_VERSION = 2


class Column(NamedTuple):
    name: str
    type: str  # an Arrow type, by the name `arrow_type` maps
    description: str


COLUMNS: tuple[Column, ...] = (
    Column("schema_version", "int16", "the record's schema version (service/predlog/record.py)"),
    Column("ts", "timestamp", "when the request's records were written, UTC (microseconds: what Spark reads)"),
    Column("ts_ns", "int64", "the same instant in nanoseconds since the epoch"),
    Column("request_id", "string", "the request's X-Request-ID (nginx sets one)"),
    Column("row", "int32", "the row's index in its request (0 for a single transaction)"),
    Column("route", "string", "the route that scored it, as its path template"),
    Column("explained", "bool", "whether the answer carried reason codes (?explain=true)"),
    Column("transaction_id", "string", "the caller's transaction id (v1's transaction_id, the by-id id, V2's id)"),
    Column("key_id", "string", "a short digest of the API key used (never the key)"),
    Column("model_version", "string", "the champion's version, which answered"),
    Column("model_sha256", "string", "the digest of the champion's forest artifact"),
    Column("threshold", "int16", "the decision threshold in force (fraud-score >= threshold is fraud)"),
    Column("probability", "float64", "P(fraud), exactly predict_proba's"),
    Column("fraud_score", "int16", "the answer's fraud-score, round(100 * probability)"),
    Column("is_fraud", "bool", "the answer's is-fraud"),
    Column("ood_warning", "bool", "the answer's ood-warning"),
    Column("ood_features", "list<string>", "the answer's ood-features (empty when none)"),
    Column("reasons", "list<reason>", "the answer's reasons when explained: feature, value, contribution"),
    Column("challenger_version", "string", "the challenger's version, when one is configured"),
    Column("challenger_probability", "float64", "the challenger's P(fraud) of the same features"),
    Column("challenger_is_fraud", "bool", "the challenger's decision at its own threshold"),
    Column("sample_weight", "float64", "1 / the chance the row had to be logged (PREDICTION_LOG_SAMPLE)"),
    Column("deadline", "timestamp", "when the answer was due (the request's deadline), when nginx stamped it"),
    Column("service_us", "int64", "the request's time in the app when its records were written, microseconds"),
    Column("client_address", "string", "the client's address, only with PREDICTION_LOG_CLIENT_ADDRESS"),
    *(Column(name, "float64", f"the feature as scored: {text}") for name, text in FEATURE_DESCRIPTIONS.items()),
    # version 2
    Column("trace_id", "string", "the request's W3C trace id (the caller's traceparent's, else nginx's fresh one)"),
)
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)


def arrow_type(name: str) -> Any:
    import pyarrow as pa  # the compactor and readers only; the workers never load it for the log

    reason = pa.struct([("feature", pa.string()), ("value", pa.float64()), ("contribution", pa.float64())])
    return {
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "string": pa.string(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "list<string>": pa.list_(pa.string()),
        "list<reason>": pa.list_(reason),
    }[name]


def arrow_schema() -> Any:
    """The Parquet files' schema, with the version in its metadata."""
    import pyarrow as pa

    return pa.schema(
        [pa.field(c.name, arrow_type(c.type)) for c in COLUMNS],
        metadata={"fraud_prediction_log_schema_version": str(SCHEMA_VERSION)},
    )
