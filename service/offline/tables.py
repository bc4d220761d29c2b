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

from service.core.features import FEATURES, N_FEATURES
from service.core.settings import Settings
from service.engine.loader import LoadedModel, load_model
from service.engine.ood import OutOfDistribution
from service.engine.scoring import Scoring
from service.offline import _columns

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


def as_float64(column: pa.Array, name: str) -> pa.Array:
    """The column as float64, nulls where a value is missing or not a number. Strings are cast by
    Arrow; a chunk with a bad value is bisected, so a value is accepted or refused the same way
    whichever rows share its chunk."""
    kind = column.type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_decimal(kind):
        return pc.cast(column, pa.float64())
    if pa.types.is_dictionary(kind):
        return as_float64(column.dictionary_decode(), name)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise TableError(f"column {name} holds {kind}, not numbers")
    try:
        return pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(column) == 1:
            return pa.nulls(1, pa.float64())
        middle = len(column) // 2
        return pa.concat_arrays([as_float64(column[:middle], name), as_float64(column[middle:], name)])


def _problem(name: str, raw: object, value: float) -> str:
    if raw is None:
        return f"{name} is missing"
    if value != value and not isinstance(raw, float) and str(raw).strip().lower() not in ("nan", "+nan", "-nan"):
        return f"{name} is not a number: {str(raw)[:40]!r}"
    if not np.isfinite(value):
        return f"{name} is not a finite number: {raw}"
    return f"{name} is beyond the float32 range: {raw}"


FEATURE_LABELS = tuple(name.encode() for name in FEATURES)
UNBOUNDED = (np.full(N_FEATURES, -np.inf), np.full(N_FEATURES, np.inf))  # no feature is out of distribution


@dataclass(frozen=True)
class Features:
    """A batch's features read for the walker, every row: the float64 columns (NaN where a value is
    missing or not a number), the float32 rows, and two bit sets a row (bit j for FEATURES[j]):
    the values the service would refuse, and the values out of distribution."""

    columns: list[np.ndarray]
    rows: np.ndarray
    refused: np.ndarray
    outside: np.ndarray
    names: tuple[str, ...] = FEATURES  # the features in columns: all, or a worker's share

    @classmethod
    def read(
        cls,
        batch: pa.RecordBatch,
        low: np.ndarray,
        high: np.ndarray,
        rows: np.ndarray | None = None,
        names: tuple[str, ...] = FEATURES,
    ) -> Features:
        """low and high: the out-of-distribution bounds a feature (service/engine/ood.py); rows: where
        to write the float32 rows (batch.num_rows x 30, C order), if not in a new array; names:
        the features to read, when only some (the others' places in rows are left as they are)."""
        columns = [as_float64(batch.column(name), name).to_numpy(zero_copy_only=False) for name in names]
        n = batch.num_rows
        if rows is None:
            rows = np.empty((n, N_FEATURES), dtype=np.float32)
        refused, outside = np.empty(n, dtype=np.uint32), np.empty(n, dtype=np.uint32)
        # One C pass: the float32 rows (rounded as sklearn rounds them), refused when NaN (missing,
        # not a number), +-inf or beyond float32, and low > x or high < x for out of distribution.
        places = () if names == FEATURES else (tuple(FEATURES.index(name) for name in names),)
        _columns.rows(tuple(columns), low, high, rows, refused, outside, *places)
        return cls(columns, rows, refused, outside, names)

    def kept(self, ok: np.ndarray) -> Features:
        """Only the rows where ok."""
        columns = [column[ok] for column in self.columns]
        return Features(columns, self.rows[ok], self.refused[ok], self.outside[ok], self.names)

    def reasons(self, batch: pa.RecordBatch) -> dict[int, str]:
        """The refused rows' index in the batch -> why."""
        reasons: dict[int, str] = {}
        for i in np.flatnonzero(self.refused).tolist():
            bits = int(self.refused[i])
            reasons[i] = "; ".join(
                _problem(name, batch.column(name)[i].as_py(), self.columns[j][i])
                for j, name in enumerate(self.names)
                if bits >> FEATURES.index(name) & 1
            )
        return reasons


def read_features(batch: pa.RecordBatch) -> tuple[list[np.ndarray], np.ndarray, dict[int, str]]:
    """(columns, ok, reasons): the features as float64 columns in the model's order, ok the rows
    that can be scored, reasons the refused rows' index in the batch -> why."""
    features = Features.read(batch, *UNBOUNDED)
    return features.columns, features.refused == 0, features.reasons(batch)


def _ood_names(outside: np.ndarray) -> pa.Array:
    """Each row's out-of-distribution feature names, comma-separated ("" when none)."""
    offsets, data = _columns.names(outside, FEATURE_LABELS)
    return pa.StringArray.from_buffers(len(outside), pa.py_buffer(offsets), pa.py_buffer(data))


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
        ood = OutOfDistribution.for_model(model.manifest, settings.ood_z)
        return cls(model, ood, model.threshold["value"])  # the service's: service/core/threshold.py

    @property
    def can_explain(self) -> bool:
        return hasattr(self.model.scorer, "explain_row")

    def score(self, features: Features, explain: bool = False) -> list[pa.Array]:
        """The output columns (output_fields order) for features of rows that are not refused."""
        return self.columns(
            self.model.scorer.predict_rows(features.rows), features.outside, features if explain else None
        )

    def columns(
        self, probability: np.ndarray, outside: np.ndarray, explained: Features | None = None
    ) -> list[pa.Array]:
        """The output columns (output_fields order) from the rows' probabilities (walked
        elsewhere: a worker process), their out-of-distribution bit sets, and, for the reasons
        column, their features."""
        fraud_score = fraud_scores(probability)
        result = [
            pa.array(probability),
            pa.array(fraud_score),
            pa.array(fraud_score >= self.threshold),
            pa.array(outside != 0),
            _ood_names(outside),
            pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(len(probability), dtype=np.int32)), pa.array([self.model.version])
            ).dictionary_decode(),
        ]
        if explained is not None:
            scoring = Scoring(self.model, self.ood, self.threshold)
            rows = np.column_stack(explained.columns).tolist() if explained.columns else []
            result.append(pa.array([orjson.dumps(scoring.one_explained(row)["reasons"]).decode() for row in rows]))
        return result

    def score_batch(
        self, batch: pa.RecordBatch, explain: bool = False, with_features: bool = False
    ) -> tuple[np.ndarray, list[pa.Array], dict[int, str]]:
        """(ok, columns of the ok rows, reasons of the refused rows by index in the batch); the
        columns are the features as float64 when with_features, then the output columns."""
        features = Features.read(batch, self.ood.low, self.ood.high)
        reasons = features.reasons(batch)
        ok = features.refused == 0
        if reasons:
            features = features.kept(ok)
        columns = [pa.array(column) for column in features.columns] if with_features else []
        return ok, columns + self.score(features, explain), reasons
