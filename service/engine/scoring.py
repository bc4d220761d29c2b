"""From validated transactions to results: score, decision, out-of-distribution flags, reasons.

Every scored row, single or batch, also goes to the drift counter and the challenger (when there
are): here, in one place, vectorised for a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import orjson

from service.core.features import FEATURES
from service.engine.challenger import Challenger
from service.engine.drift import DriftCounter
from service.engine.loader import LoadedModel
from service.engine.ood import OutOfDistribution, annotate

EXPLAIN_TOP = 5


class Scored(NamedTuple):
    """A matrix's results, one entry per row."""

    probability: np.ndarray  # float64, exactly predict_proba's
    score: np.ndarray  # int32, round(100 * probability)
    is_fraud: np.ndarray  # bool
    ood_warning: np.ndarray  # bool
    outside: np.ndarray  # bool, rows x features: which values are out of distribution


class Scoring:
    def __init__(
        self,
        model: LoadedModel,
        ood: OutOfDistribution,
        threshold: int,
        observe: Callable[[int, bool, bool], None] = lambda score, is_fraud, ood_warning: None,
        observe_many: Callable[[np.ndarray, np.ndarray, np.ndarray], None] = lambda scores, is_fraud, ood: None,
        drift: DriftCounter | None = None,
        challenger: Challenger | None = None,
    ) -> None:
        self.version = model.version
        self.can_explain = hasattr(model.scorer, "explain_row")
        self._scorer = model.scorer
        self._predict_row = model.predict_row
        self._ood = ood.features
        self._outside = ood.outside
        self._threshold = threshold
        # metrics: the score distribution, fraud and out-of-distribution rates (row by row, or a
        # batch's in one update)
        self._observe = observe
        self._observe_many = observe_many
        self._drift = drift
        self._challenger = challenger
        # Only a sampled challenger log line needs the request's id: the resources read it then.
        self.wants_request_id = bool(challenger and challenger.log_sample)
        self.row_of = itemgetter(*FEATURES)
        self._plain_results = [
            orjson.dumps(annotate({"fraud-score": s, "is-fraud": s >= threshold, "model-version": self.version}, []))
            for s in range(101)
        ]
        # A flagged row's result is one of these, up to its list of features, then the names and "]}".
        self._flagged_heads = [
            orjson.dumps(
                annotate({"fraud-score": s, "is-fraud": s >= threshold, "model-version": self.version}, ["-"])
            ).removesuffix(b'"-"]}')
            for s in range(101)
        ]
        self._feature_names = [orjson.dumps(name) for name in FEATURES]

    def _result(self, probability: float, flagged: list[str]) -> dict[str, Any]:
        score = round(100.0 * probability)
        is_fraud = score >= self._threshold
        self._observe(score, is_fraud, bool(flagged))
        return annotate({"fraud-score": score, "is-fraud": is_fraud, "model-version": self.version}, flagged)

    def _beside_one(self, row: Sequence[float], score: int, request_id: str | None) -> None:
        if self._drift is not None:
            self._drift.add(row, score)
        if self._challenger is not None:
            self._challenger.one(row, score, request_id)

    def one(self, row: Sequence[float], request_id: str | None = None) -> dict[str, Any]:
        result = self._result(self._predict_row(row), self._ood(row))
        self._beside_one(row, result["fraud-score"], request_id)
        return result

    def _explained(self, row: Sequence[float]) -> dict[str, Any]:
        """The exact path decomposition: bias + Σ contributions = P(fraud). Reasons are the
        features that pushed the probability up the most (the largest contributions first)."""
        probability, _bias, contributions = self._scorer.explain_row(row)
        result = self._result(probability, self._ood(row))
        top = np.argsort(-contributions, kind="stable")[:EXPLAIN_TOP]
        result["reasons"] = [
            {"feature": FEATURES[i], "value": row[i], "contribution": float(contributions[i])} for i in top
        ]
        return result

    def one_explained(self, row: Sequence[float], request_id: str | None = None) -> dict[str, Any]:
        result = self._explained(row)
        self._beside_one(row, result["fraud-score"], request_id)
        return result

    def rows(self, X: np.ndarray, request_id: str | None = None) -> Scored:
        """A matrix of rows (in feature order) scored at once: vectorised decisions and
        out-of-distribution flags, counted in the metrics in one update."""
        probability = self._scorer.predict_rows(X)
        # np.rint rounds half to even, as Python's round() does, on the same double 100 * p.
        score = np.rint(100.0 * probability).astype(np.int32)
        is_fraud = score >= self._threshold
        outside = self._outside(X)
        ood_warning = outside.any(axis=1)
        self._observe_many(score, is_fraud, ood_warning)
        self._beside_many(X, score, request_id)
        return Scored(probability, score, is_fraud, ood_warning, outside)

    def many_json(self, X: np.ndarray, request_id: str | None = None) -> bytes:
        """The batch's results as a JSON array, one result per row in order, each as `one` gives
        it. A row without out-of-distribution features has one of 101 possible results (its
        score decides the rest), serialised once at start; only flagged rows are built here."""
        scored = self.rows(X, request_id)
        scores = scored.score.tolist()
        parts = list(map(self._plain_results.__getitem__, scores))
        flagged = np.flatnonzero(scored.ood_warning)
        if len(flagged):
            # the flagged rows' features in one pass: row-major, so grouped by row, in column order
            _, columns = np.nonzero(scored.outside[flagged])
            names = list(map(self._feature_names.__getitem__, columns.tolist()))
            counts = np.count_nonzero(scored.outside[flagged], axis=1).tolist()
            start = 0
            for i, count in zip(flagged.tolist(), counts, strict=True):
                parts[i] = self._flagged_heads[scores[i]] + b",".join(names[start : start + count]) + b"]}"
                start += count
        return b"[" + b",".join(parts) + b"]"

    def many(self, rows: list[Sequence[float]], explain: bool, request_id: str | None = None) -> list[dict[str, Any]]:
        """The results of many rows as dicts, one per row in order, as `one` (or `one_explained`) gives them."""
        if explain:
            return self.many_explained(rows, request_id)
        scored = self.rows(np.array(rows, dtype=np.float64), request_id)
        results = [
            {"fraud-score": score, "is-fraud": is_fraud, "model-version": self.version, "ood-warning": ood}
            for score, is_fraud, ood in zip(
                scored.score.tolist(), scored.is_fraud.tolist(), scored.ood_warning.tolist(), strict=True
            )
        ]
        for i in np.flatnonzero(scored.ood_warning).tolist():
            results[i]["ood-features"] = [FEATURES[j] for j in np.flatnonzero(scored.outside[i]).tolist()]
        return results

    def many_explained(self, rows: list[Sequence[float]], request_id: str | None = None) -> list[dict[str, Any]]:
        results = [self._explained(row) for row in rows]
        self._beside_many(np.array(rows, dtype=np.float64), np.array([r["fraud-score"] for r in results]), request_id)
        return results

    def _beside_many(self, X: np.ndarray, score: np.ndarray, request_id: str | None) -> None:
        """Drift counts and the challenger, for a matrix of rows (as _beside_one for one)."""
        if self._drift is not None or self._challenger is not None:
            scores = score.astype(np.float64)
            if self._drift is not None:
                self._drift.add_rows(X, scores)
            if self._challenger is not None:
                self._challenger.many(X, scores, request_id)
