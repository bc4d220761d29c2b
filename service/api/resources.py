"""Falcon resources. Each receives what it needs in __init__; the hot path only does per-request work."""

from __future__ import annotations

import json
from typing import Any

import falcon
import orjson

from service.api.auth import ApiKeys
from service.api.body import decode
from service.api.budget import RowBudget
from service.api.errors import JSON, ApiError, invalid_body
from service.api.prediction_log import entry as log_entry
from service.contract.schema import BATCH_FIELD, ID_FIELD, TransactionValidator
from service.engine.drift import DriftCounter
from service.engine.scoring import Scoring
from service.telemetry.stages import clock

RETRY_AFTER_SECONDS = "30"


def require_key(keys: ApiKeys, req: falcon.Request) -> int:
    """The index of the request's API key (what RowBudget.spend takes), or 403."""
    index = keys.index(req.get_header("X-API-Key"))
    if index is None:
        raise ApiError(falcon.HTTP_403, "forbidden", "a valid X-API-Key header is required")
    return index


def require_json(req: falcon.Request) -> None:
    """A body with no Content-Type is read as JSON; a declared non-JSON type is refused."""
    content_type = req.content_type
    if content_type is None or content_type == JSON:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != JSON and not (media_type.startswith("application/") and media_type.endswith("+json")):
        raise ApiError(
            falcon.HTTP_415, "unsupported_media_type", f"Content-Type must be application/json, got {content_type!r}"
        )


def wants_explanation(req: falcon.Request, scoring: Scoring) -> bool:
    if not req.query_string:  # the common case costs one attribute read
        return False
    if not req.get_param_as_bool("explain", default=False):
        return False
    if not scoring.can_explain:
        raise ApiError(
            falcon.HTTP_400,
            "explain_unavailable",
            "explanations need a tree model; this model is served through sklearn",
        )
    return True


def log_ids(req: falcon.Request, scoring: Scoring) -> dict[str, str | None] | None:
    """The request's ids (nginx sets both) for a sampled challenger log line, read only when one may
    be written."""
    if not scoring.wants_log_ids:
        return None
    return {"request_id": req.get_header("X-Request-ID"), "trace_id": getattr(req.context, "trace_id", None)}


def charge_batch(budget: RowBudget, key: int, items: Any, batch_max: int, noun: str) -> None:
    """A batch's items beyond BATCH_MAX are refused (413) for one row; otherwise the key is charged
    for the items it sends, valid or not: validating them is work too. (A body that is not JSON
    costs one row as well: the batch routes pass decode a charge.)"""
    if isinstance(items, list) and len(items) > batch_max:
        budget.spend(key, 1)
        raise ApiError(
            falcon.HTTP_413, "batch_too_large", f"at most {batch_max} {noun} per batch (BATCH_MAX), got {len(items)}"
        )
    budget.spend(key, len(items) if isinstance(items, list) else 1)


def transaction_ids(items: list[dict[str, Any]]) -> list[str | None] | None:
    """A valid batch's optional transaction ids (the schema has checked them), one per item (None
    where an item has none); None when no item has one."""
    if not any(ID_FIELD in item for item in items):
        return None
    return [item.get(ID_FIELD) for item in items]


def respond(resp: falcon.Response, body: dict[str, Any]) -> None:
    resp.data = orjson.dumps(body)
    resp.content_type = JSON


class StaticJson:
    """A JSON body fixed at start (health, model info, the OpenAPI document): serialised once."""

    def __init__(self, body: Any, status: str = falcon.HTTP_200, keys: ApiKeys | None = None) -> None:
        try:
            self._body = orjson.dumps(body)
        except orjson.JSONEncodeError:  # an integer beyond 64 bits (the schema's exact bounds): orjson writes none
            self._body = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        self._status = status
        self._keys = keys

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._keys is not None:
            require_key(self._keys, req)
        resp.status = self._status
        resp.data = self._body
        resp.content_type = JSON


class FraudScoreResource:
    def __init__(self, scoring: Scoring, validator: TransactionValidator, keys: ApiKeys, budget: RowBudget) -> None:
        self._scoring = scoring
        self._one = scoring.one
        self._row_of = scoring.row_of
        self._validator = validator
        self._is_valid = validator.is_valid
        self._keys = keys
        self._spend = budget.spend

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = require_key(self._keys, req)
        self._spend(key, 1)
        require_json(req)
        transaction = decode(req.bounded_stream.read())
        if not self._is_valid(transaction):
            raise invalid_body(self._validator.violations(transaction))
        row = self._row_of(transaction)
        ids = log_ids(req, self._scoring)
        tid = transaction.get(ID_FIELD)  # valid: a string when present
        explain = wants_explanation(req, self._scoring)
        stages = req.context.stages
        stages.read = clock()
        logged = log_entry(req, self._scoring, key, tid, explain) if self._scoring.log else None
        result = (
            self._scoring.one_explained(row, ids, logged, stages) if explain else self._one(row, ids, logged, stages)
        )
        stages.scored = clock()
        if tid is not None:
            result[ID_FIELD] = tid
        respond(resp, result)


class BatchScoreResource:
    def __init__(
        self, scoring: Scoring, validator: TransactionValidator, keys: ApiKeys, budget: RowBudget, batch_max: int
    ) -> None:
        self._scoring = scoring
        self._validator = validator
        if validator.matrix is None or validator.read_body is None:
            raise ValueError("the batch route needs the batch document's one-pass readers")
        self._matrix = validator.matrix
        self._read_body = validator.read_body
        self._keys = keys
        self._budget = budget
        self._batch_max = batch_max
        self._version_tail = b',"model-version":' + orjson.dumps(scoring.version) + b"}"

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = require_key(self._keys, req)
        require_json(req)
        explain = wants_explanation(req, self._scoring)
        raw = req.bounded_stream.read()
        # A plain valid body is read straight into the matrix and its transaction ids; any other
        # (and an explained batch, which needs the items) is decoded and checked item by item, as
        # the 4xx answers need.
        read = None if explain else self._read_body(raw)
        if read is not None:
            X, tids = read.matrix, read.strings.get(ID_FIELD)
            self._budget.spend(key, len(X))
        else:
            body = decode(raw, lambda: self._budget.spend(key, 1))
            items = body.get(BATCH_FIELD) if isinstance(body, dict) else None
            charge_batch(self._budget, key, items, self._batch_max, "transactions")
            X = self._matrix(body)
            if X is None:
                raise invalid_body(self._validator.violations(body))
            tids = transaction_ids(items)
        stages = req.context.stages
        stages.read = clock()
        logged = log_entry(req, self._scoring, key, tids, explain) if self._scoring.log else None
        if explain or tids is not None:
            rows = [self._scoring.row_of(item) for item in items] if explain else X
            results = self._scoring.many(rows, explain, log_ids(req, self._scoring), logged, stages)
            stages.scored = clock()
            if tids is not None:
                for tid, result in zip(tids, results, strict=True):
                    if tid is not None:
                        result[ID_FIELD] = tid
            respond(resp, {"results": results, "model-version": self._scoring.version})
        else:
            # The results' JSON is assembled with the scores (most are serialised at start): "score".
            scored = self._scoring.many_json(X, log_ids(req, self._scoring), logged, stages)
            stages.scored = clock()
            resp.data = b"".join((b'{"results":', scored, self._version_tail))
            resp.content_type = JSON


class DriftResource:
    """GET /v1/drift: PSI per feature and for the score, from the same counts /metrics exposes;
    POST /v1/drift/reset: count from now on."""

    def __init__(self, drift: DriftCounter | None, keys: ApiKeys) -> None:
        self._drift = drift
        self._keys = keys

    def _counter(self, req: falcon.Request) -> DriftCounter:
        require_key(self._keys, req)
        if self._drift is None:
            raise ApiError(
                falcon.HTTP_409,
                "drift_unavailable",
                "the model's manifest records no training bins: retrain it with make model",
            )
        return self._drift

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(resp, self._counter(req).report())

    def on_post_reset(self, req: falcon.Request, resp: falcon.Response) -> None:
        drift = self._counter(req)
        drift.reset()
        respond(resp, drift.report())


class ModelUnavailableResource:
    """Stands in for a model-backed route while no model is loaded (graceful degradation)."""

    def __init__(self, reason: str, method: str) -> None:
        self._message = f"no model is loaded: {reason}"
        setattr(self, f"on_{method}", self._unavailable)

    def _unavailable(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
        raise ApiError(
            falcon.HTTP_503, "model_unavailable", self._message, headers={"Retry-After": RETRY_AFTER_SECONDS}
        )
