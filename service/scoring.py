"""From validated transactions to results: score, decision, out-of-distribution flags, reasons."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from service.features import FEATURES
from service.loader import LoadedModel
from service.ood import OutOfDistribution, annotate
from service.settings import Settings

EXPLAIN_TOP = 5


def threshold_in_force(settings: Settings, model: LoadedModel) -> int:
    """The fraud threshold for this model: the one place the service and bulk scoring read it."""
    return settings.fraud_threshold


class Scoring:
    def __init__(
        self,
        model: LoadedModel,
        ood: OutOfDistribution,
        threshold: int,
        observe: Callable[[int, bool, bool], None] = lambda score, is_fraud, ood_warning: None,
    ) -> None:
        self.version = model.version
        self.can_explain = hasattr(model.scorer, "explain_row")
        self._scorer = model.scorer
        self._predict_row = model.predict_row
        self._ood = ood.features
        self._ood_rows = ood.features_of_rows
        self._threshold = threshold
        self._observe = observe  # metrics: the score distribution, fraud and out-of-distribution rates
        self.row_of = itemgetter(*FEATURES)

    def _result(self, probability: float, flagged: list[str]) -> dict[str, Any]:
        score = round(100.0 * probability)
        is_fraud = score >= self._threshold
        self._observe(score, is_fraud, bool(flagged))
        return annotate({"fraud-score": score, "is-fraud": is_fraud, "model-version": self.version}, flagged)

    def one(self, row: Sequence[float]) -> dict[str, Any]:
        return self._result(self._predict_row(row), self._ood(row))

    def one_explained(self, row: Sequence[float]) -> dict[str, Any]:
        """The exact path decomposition: bias + Σ contributions = P(fraud). Reasons are the
        features that pushed the probability up the most (the largest contributions first)."""
        probability, _bias, contributions = self._scorer.explain_row(row)
        result = self._result(probability, self._ood(row))
        top = np.argsort(-contributions, kind="stable")[:EXPLAIN_TOP]
        result["reasons"] = [
            {"feature": FEATURES[i], "value": row[i], "contribution": float(contributions[i])} for i in top
        ]
        return result

    def many(self, rows: list[Sequence[float]], explain: bool) -> list[dict[str, Any]]:
        if explain:
            return [self.one_explained(row) for row in rows]
        X = np.array(rows, dtype=np.float64)
        probabilities = self._scorer.predict_rows(X).tolist()
        return [self._result(p, flagged) for p, flagged in zip(probabilities, self._ood_rows(X), strict=True)]
