"""From validated transactions to results: score, decision, out-of-distribution flags, reasons.

Every scored row, single or batch, also goes to the drift counter, the challenger and the prediction
log (when there are): here, in one place, vectorised for a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from time import perf_counter_ns
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
    """Every scoring method takes the request's `stages` (service/telemetry/stages.py's Stages), or
    None: the challenger's time is added to its `challenger`, in nanoseconds."""

    def __init__(
        self,
        model: LoadedModel,
        ood: OutOfDistribution,
        threshold: int,
        observe: Callable[[int, bool, bool], None] = lambda score, is_fraud, ood_warning: None,
        observe_many: Callable[[np.ndarray, np.ndarray, np.ndarray], None] = lambda scores, is_fraud, ood: None,
        drift: DriftCounter | None = None,
        challenger: Challenger | None = None,
        log: Any = None,
    ) -> None:
        self.version = model.version
        # The prediction log (service/predlog/sink.py's PredictionLog: `one` and `many` take a
        # request's entry, made by its `entry`, and the scored rows), or None when it is off.
        self.log = log
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
        # Only a sampled challenger log line needs the request's ids: the resources read them then.
        self.wants_log_ids = bool(challenger and challenger.log_sample)
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

    def _beside_one(
        self, row: Sequence[float], score: int, log_ids: dict[str, str | None] | None, stages: Any
    ) -> float | None:
        """Drift counts and the challenger for one row; the challenger's probability, if any."""
        if self._drift is not None:
            self._drift.add(row, score)
        if self._challenger is None:
            return None
        if stages is None:
            return self._challenger.one(row, score, log_ids)
        started = perf_counter_ns()
        probability = self._challenger.one(row, score, log_ids)
        stages.challenger += perf_counter_ns() - started
        return probability

    def one(
        self, row: Sequence[float], log_ids: dict[str, str | None] | None = None, entry: Any = None, stages: Any = None
    ) -> dict[str, Any]:
        """`entry`: the request's prediction-log entry (from the log's `entry`), when it is logged."""
        probability = self._predict_row(row)
        flagged = self._ood(row)
        result = self._result(probability, flagged)
        challenger = self._beside_one(row, result["fraud-score"], log_ids, stages)
        if entry is not None:
            self.log.one(entry, row, probability, result["fraud-score"], result["is-fraud"], flagged, None, challenger)
        return result

    def _explained(self, row: Sequence[float]) -> tuple[dict[str, Any], float, list[str]]:
        """The exact path decomposition: bias + Σ contributions = P(fraud). Reasons are the
        features that pushed the probability up the most (the largest contributions first).
        Returns the result, the probability and the out-of-distribution features."""
        probability, _bias, contributions = self._scorer.explain_row(row)
        flagged = self._ood(row)
        result = self._result(probability, flagged)
        top = np.argsort(-contributions, kind="stable")[:EXPLAIN_TOP]
        result["reasons"] = [
            {"feature": FEATURES[i], "value": row[i], "contribution": float(contributions[i])} for i in top
        ]
        return result, probability, flagged

    def one_explained(
        self, row: Sequence[float], log_ids: dict[str, str | None] | None = None, entry: Any = None, stages: Any = None
    ) -> dict[str, Any]:
        result, probability, flagged = self._explained(row)
        challenger = self._beside_one(row, result["fraud-score"], log_ids, stages)
        if entry is not None:
            self.log.one(
                entry,
                row,
                probability,
                result["fraud-score"],
                result["is-fraud"],
                flagged,
                result["reasons"],
                challenger,
            )
        return result

    def rows(
        self, X: np.ndarray, log_ids: dict[str, str | None] | None = None, entry: Any = None, stages: Any = None
    ) -> Scored:
        """A matrix of rows (in feature order) scored at once: vectorised decisions and
        out-of-distribution flags, counted in the metrics in one update."""
        probability = self._scorer.predict_rows(X)
        # np.rint rounds half to even, as Python's round() does, on the same double 100 * p.
        score = np.rint(100.0 * probability).astype(np.int32)
        is_fraud = score >= self._threshold
        outside = self._outside(X)
        ood_warning = outside.any(axis=1)
        self._observe_many(score, is_fraud, ood_warning)
        challenger = self._beside_many(X, score, log_ids, stages)
        if entry is not None:
            self.log.many(entry, X, probability, score, is_fraud, outside, None, challenger)
        return Scored(probability, score, is_fraud, ood_warning, outside)

    def many_json(
        self, X: np.ndarray, log_ids: dict[str, str | None] | None = None, entry: Any = None, stages: Any = None
    ) -> bytes:
        """The batch's results as a JSON array, one result per row in order, each as `one` gives
        it. A row without out-of-distribution features has one of 101 possible results (its
        score decides the rest), serialised once at start; only flagged rows are built here."""
        scored = self.rows(X, log_ids, entry, stages)
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

    def many(
        self,
        rows: list[Sequence[float]],
        explain: bool,
        log_ids: dict[str, str | None] | None = None,
        entry: Any = None,
        stages: Any = None,
    ) -> list[dict[str, Any]]:
        """The results of many rows as dicts, one per row in order, as `one` (or `one_explained`) gives them."""
        if explain:
            return self.many_explained(rows, log_ids, entry, stages)
        scored = self.rows(np.array(rows, dtype=np.float64), log_ids, entry, stages)
        results = [
            {"fraud-score": score, "is-fraud": is_fraud, "model-version": self.version, "ood-warning": ood}
            for score, is_fraud, ood in zip(
                scored.score.tolist(), scored.is_fraud.tolist(), scored.ood_warning.tolist(), strict=True
            )
        ]
        for i in np.flatnonzero(scored.ood_warning).tolist():
            results[i]["ood-features"] = [FEATURES[j] for j in np.flatnonzero(scored.outside[i]).tolist()]
        return results

    def many_explained(
        self,
        rows: list[Sequence[float]],
        log_ids: dict[str, str | None] | None = None,
        entry: Any = None,
        stages: Any = None,
    ) -> list[dict[str, Any]]:
        explained = [self._explained(row) for row in rows]
        results = [result for result, _, _ in explained]
        X = np.array(rows, dtype=np.float64)
        score = np.array([r["fraud-score"] for r in results])
        challenger = self._beside_many(X, score, log_ids, stages)
        if entry is not None:
            probability = np.array([p for _, p, _ in explained], dtype=np.float64)
            is_fraud = np.array([r["is-fraud"] for r in results], dtype=np.bool_)
            outside = np.array([[name in flagged for name in FEATURES] for _, _, flagged in explained], dtype=np.bool_)
            self.log.many(entry, X, probability, score, is_fraud, outside, [r["reasons"] for r in results], challenger)
        return results

    def _beside_many(
        self, X: np.ndarray, score: np.ndarray, log_ids: dict[str, str | None] | None, stages: Any
    ) -> np.ndarray | None:
        """Drift counts and the challenger, for a matrix of rows (as _beside_one for one); the
        challenger's probabilities, if any."""
        if self._drift is not None or self._challenger is not None:
            scores = score.astype(np.float64)
            if self._drift is not None:
                self._drift.add_rows(X, scores)
            if self._challenger is not None:
                started = perf_counter_ns()
                probabilities = self._challenger.many(X, scores, log_ids)
                if stages is not None:
                    stages.challenger += perf_counter_ns() - started
                return probabilities
        return None
