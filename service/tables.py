"""Scores tables of transactions (Arrow record batches) exactly as the service scores requests.

One engine for every offline path (one machine, Spark): the model loaded and verified by the
service's loader, the service's out-of-distribution bounds and threshold, the same walker. A row
the service would refuse (a feature missing, not a number, not finite, beyond float32) is not
scored: it is returned with the reason instead."""

from __future__ import annotations

import functools
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


def read_features(batch: pa.RecordBatch) -> tuple[list[np.ndarray], np.ndarray, dict[int, str]]:
    """(columns, ok, reasons): the features as float64 columns in the model's order, ok the rows
    that can be scored, reasons the refused rows' index in the batch -> why."""
    columns: list[np.ndarray] = []
    bad: list[tuple[int, np.ndarray]] = []
    for j, name in enumerate(FEATURES):
        values = _as_float64(batch.column(name), name).to_numpy(zero_copy_only=False)  # nulls become NaN
        with np.errstate(invalid="ignore"):
            wrong = ~(np.abs(values) <= FLOAT32_MAX)  # NaN (missing, not a number), ±inf and beyond float32
        if wrong.any():
            bad.append((j, wrong))
        columns.append(values)
    ok = np.ones(batch.num_rows, dtype=bool)
    for _, wrong in bad:
        ok &= ~wrong
    reasons: dict[int, str] = {}
    for i in np.flatnonzero(~ok).tolist():
        problems = [
            _problem(FEATURES[j], batch.column(FEATURES[j])[i].as_py(), columns[j][i]) for j, wrong in bad if wrong[i]
        ]
        reasons[i] = "; ".join(problems)
    return columns, ok, reasons


@functools.lru_cache(maxsize=1 << 16)
def _flagged_names(code: int) -> str:
    return ",".join(FEATURES[j] for j in range(N_FEATURES) if code >> j & 1)


def _ood_names(outside: list[np.ndarray], flagged: np.ndarray) -> pa.Array:
    """Each row's flagged feature names, comma-separated ("" when none). Few rows are flagged and
    they share few patterns: each distinct pattern is named once."""
    index = np.zeros(len(flagged), dtype=np.int32)
    names = [""]
    rows = np.flatnonzero(flagged)
    if len(rows):
        codes = np.zeros(len(rows), dtype=np.int64)
        for j, column in enumerate(outside):
            codes |= column[rows].astype(np.int64) << j
        patterns, inverse = np.unique(codes, return_inverse=True)
        names += [_flagged_names(code) for code in patterns.tolist()]
        index[rows] = inverse.astype(np.int32) + 1
    return pa.DictionaryArray.from_arrays(pa.array(index), pa.array(names)).dictionary_decode()


def fraud_scores(probability: np.ndarray) -> np.ndarray:
    """round(100 * p) as the service computes it: np.rint rounds the same float64 product half
    to even, as Python's round() does."""
    return np.rint(100.0 * probability).astype(np.int32)


def rows_float32(columns: list[np.ndarray]) -> np.ndarray:
    """The rows as one C-contiguous float32 matrix, the walker's input: each float64 value rounded
    to float32 as sklearn rounds it."""
    X = np.empty((len(columns[0]) if columns else 0, len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        X[:, j] = column
    return X


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

    def score(self, columns: list[np.ndarray], explain: bool = False) -> list[pa.Array]:
        """The output columns (output_fields order) for rows that passed read_features."""
        probability = self.model.scorer.predict_rows(rows_float32(columns))
        fraud_score = fraud_scores(probability)
        outside = [self.ood.outside_column(j, column) for j, column in enumerate(columns)]
        flagged = np.logical_or.reduce(outside) if outside else np.zeros(len(probability), dtype=bool)
        result = [
            pa.array(probability),
            pa.array(fraud_score),
            pa.array(fraud_score >= self.threshold),
            pa.array(flagged),
            _ood_names(outside, flagged),
            pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(len(probability), dtype=np.int32)), pa.array([self.model.version])
            ).dictionary_decode(),
        ]
        if explain:
            scoring = Scoring(self.model, self.ood, self.threshold)
            rows = np.column_stack(columns).tolist() if columns else []
            result.append(pa.array([orjson.dumps(scoring.one_explained(row)["reasons"]).decode() for row in rows]))
        return result

    def score_batch(
        self, batch: pa.RecordBatch, explain: bool = False, with_features: bool = False
    ) -> tuple[np.ndarray, list[pa.Array], dict[int, str]]:
        """(ok, columns of the ok rows, reasons of the refused rows by index in the batch); the
        columns are the features as float64 when with_features, then the output columns."""
        columns, ok, reasons = read_features(batch)
        if reasons:
            columns = [column[ok] for column in columns]
        features = [pa.array(column) for column in columns] if with_features else []
        return ok, features + self.score(columns, explain), reasons
