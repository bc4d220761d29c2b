"""Scores tables of transactions (Arrow record batches) exactly as the service scores requests.

One engine for every offline path (one machine, Spark): the model loaded and verified by the
service's loader, the service's out-of-distribution bounds and threshold, the same walker. A row
the service would refuse (a feature missing, not a number, not finite, beyond float32) is not
scored: it is returned with the reason instead."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from service.features import FEATURES, N_FEATURES
from service.loader import LoadedModel, load_model
from service.ood import OutOfDistribution
from service.scoring import Scoring
from service.settings import Settings

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the schema's bound: the model computes in float32

OUTPUT_FIELDS = [
    pa.field("probability", pa.float64()),
    pa.field("fraud_score", pa.int32()),
    pa.field("is_fraud", pa.bool_()),
    pa.field("ood_warning", pa.bool_()),
    pa.field("ood_features", pa.string()),  # the service's ood-features, comma-separated
    pa.field("model_version", pa.string()),
]
REASONS_FIELD = pa.field("reasons", pa.string())  # the service's reasons, as JSON


class TableError(ValueError):
    """The table cannot be scored at all (a feature column missing or of a non-numeric type)."""


def output_fields(explain: bool) -> list[pa.Field]:
    return OUTPUT_FIELDS + ([REASONS_FIELD] if explain else [])


def missing_features(names: list[str]) -> list[str]:
    present = set(names)
    return [name for name in FEATURES if name not in present]


def _as_float64(column: pa.Array, name: str) -> pa.Array:
    """The column as float64, nulls where a value is missing or not a number. Strings are cast by
    Arrow; a chunk with a bad value is bisected, so a value is accepted or refused the same way
    whichever rows share its chunk."""
    kind = column.type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_decimal(kind):
        return pc.cast(column, pa.float64())
    if pa.types.is_dictionary(kind):
        return _as_float64(column.dictionary_decode(), name)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise TableError(f"column {name} holds {kind}, not numbers")
    try:
        return pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(column) == 1:
            return pa.nulls(1, pa.float64())
        middle = len(column) // 2
        return pa.concat_arrays([_as_float64(column[:middle], name), _as_float64(column[middle:], name)])


def _problem(name: str, raw: object, value: float) -> str:
    if raw is None:
        return f"{name} is missing"
    if value != value and not isinstance(raw, float) and str(raw).strip().lower() not in ("nan", "+nan", "-nan"):
        return f"{name} is not a number: {str(raw)[:40]!r}"
    if not np.isfinite(value):
        return f"{name} is not a finite number: {raw}"
    return f"{name} is beyond the float32 range: {raw}"


def read_features(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(X, ok, reasons): X the features as float64 in the model's order, ok the rows that can be
    scored, reasons the refused rows' index in the batch -> why."""
    X = np.empty((batch.num_rows, N_FEATURES), dtype=np.float64)
    for j, name in enumerate(FEATURES):
        column = batch.column(name)
        X[:, j] = _as_float64(column, name).to_numpy(zero_copy_only=False)  # nulls become NaN
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(X) <= FLOAT32_MAX)  # NaN (missing, not a number), ±inf and beyond float32
    ok = ~bad.any(axis=1)
    reasons: dict[int, str] = {}
    for i in np.flatnonzero(~ok).tolist():
        problems = []
        for j in np.flatnonzero(bad[i]).tolist():
            problems.append(_problem(FEATURES[j], batch.column(FEATURES[j])[i].as_py(), X[i, j]))
        reasons[i] = "; ".join(problems)
    return X, ok, reasons


def _ood_names(outside: np.ndarray) -> pa.Array:
    """Each row's flagged feature names, comma-separated ("" when none). Rows share few patterns:
    each distinct pattern is named once."""
    codes = np.packbits(outside, axis=1, bitorder="little")
    codes = codes.view(np.dtype((np.void, codes.shape[1]))).ravel()
    patterns, index = np.unique(codes, return_inverse=True)
    names = []
    for pattern in patterns:
        flags = np.unpackbits(np.frombuffer(pattern.tobytes(), dtype=np.uint8), bitorder="little")[:N_FEATURES]
        names.append(",".join(FEATURES[k] for k in np.flatnonzero(flags)))
    return pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32)), pa.array(names)).dictionary_decode()


def fraud_scores(probability: np.ndarray) -> np.ndarray:
    """round(100 * p) as the service computes it: np.rint rounds the same float64 product half
    to even, as Python's round() does."""
    return np.rint(100.0 * probability).astype(np.int32)


@dataclass(frozen=True)
class Engine:
    """The service's model, out-of-distribution bounds and threshold, for whole tables."""

    model: LoadedModel
    ood: OutOfDistribution
    threshold: int

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        model = load_model(settings)
        ood = OutOfDistribution(model.manifest.get("feature_stats"), settings.ood_z)
        return cls(model, ood, model.threshold["value"])  # the service's: service/threshold.py

    @property
    def can_explain(self) -> bool:
        return hasattr(self.model.scorer, "explain_row")

    def score(self, X: np.ndarray, explain: bool = False) -> list[pa.Array]:
        """The output columns (output_fields order) for rows that passed read_features."""
        probability = self.model.scorer.predict_rows(X)
        fraud_score = fraud_scores(probability)
        outside = self.ood.outside(X)
        columns = [
            pa.array(probability),
            pa.array(fraud_score),
            pa.array(fraud_score >= self.threshold),
            pa.array(outside.any(axis=1)),
            _ood_names(outside),
            pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(len(X), dtype=np.int32)), pa.array([self.model.version])
            ).dictionary_decode(),
        ]
        if explain:
            scoring = Scoring(self.model, self.ood, self.threshold)
            columns.append(
                pa.array([orjson.dumps(scoring.one_explained(row)["reasons"]).decode() for row in X.tolist()])
            )
        return columns

    def score_batch(
        self, batch: pa.RecordBatch, explain: bool = False, with_features: bool = False
    ) -> tuple[np.ndarray, list[pa.Array], dict[int, str]]:
        """(ok, columns of the ok rows, reasons of the refused rows by index in the batch); the
        columns are the features as float64 when with_features, then the output columns."""
        X, ok, reasons = read_features(batch)
        if reasons:
            X = X[ok]
        features = [pa.array(X[:, j]) for j in range(N_FEATURES)] if with_features else []
        return ok, features + self.score(X, explain), reasons
