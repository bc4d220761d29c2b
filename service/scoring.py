"""From validated transactions to results: score, decision, out-of-distribution flags, reasons.

Every scored row, single or batch, also goes to the drift counter and the challenger (when there
are): here, in one place, vectorised for a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from service.challenger import Challenger
from service.drift import DriftCounter
from service.features import FEATURES
from service.loader import LoadedModel
from service.ood import OutOfDistribution, annotate

EXPLAIN_TOP = 5


class Scoring:
    def __init__(
        self,
        model: LoadedModel,
        ood: OutOfDistribution,
        threshold: int,
        observe: Callable[[int, bool, bool], None] = lambda score, is_fraud, ood_warning: None,
        drift: DriftCounter | None = None,
        challenger: Challenger | None = None,
    ) -> None:
        self.version = model.version
        self.can_explain = hasattr(model.scorer, "explain_row")
        self._scorer = model.scorer
        self._predict_row = model.predict_row
        self._ood = ood.features
        self._ood_rows = ood.features_of_rows
        self._threshold = threshold
        self._observe = observe  # metrics: the score distribution, fraud and out-of-distribution rates
        self._drift = drift
        self._challenger = challenger
        # Only a sampled challenger log line needs the request's id: the resources read it then.
        self.wants_request_id = bool(challenger and challenger.log_sample)
        self.row_of = itemgetter(*FEATURES)

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

    def many(self, rows: list[Sequence[float]], explain: bool, request_id: str | None = None) -> list[dict[str, Any]]:
        X = np.array(rows, dtype=np.float64)
        if explain:
            results = [self._explained(row) for row in rows]
        else:
            probabilities = self._scorer.predict_rows(X).tolist()
            results = [self._result(p, flagged) for p, flagged in zip(probabilities, self._ood_rows(X), strict=True)]
        if self._drift is not None or self._challenger is not None:
            scores = np.array([r["fraud-score"] for r in results], dtype=np.float64)
            if self._drift is not None:
                self._drift.add_rows(X, scores)
            if self._challenger is not None:
                self._challenger.many(X, scores, request_id)
        return results
