"""Falcon resources. Each receives what it needs in __init__; the hot path only does per-request work."""

from __future__ import annotations

from operator import itemgetter
from typing import Callable

import falcon
import orjson

from service.auth import ApiKeys
from service.body import decode
from service.errors import JSON, ApiError, invalid_body
from service.features import FEATURES
from service.loader import LoadedModel
from service.schema import TransactionValidator


def require_key(keys: ApiKeys, req: falcon.Request) -> None:
    if not keys.accepts(req.get_header("X-API-Key")):
        raise ApiError(falcon.HTTP_403, "forbidden", "a valid X-API-Key header is required")


def require_json(req: falcon.Request) -> None:
    """A body with no Content-Type is read as JSON; a declared non-JSON type is refused."""
    content_type = req.content_type
    if content_type is None or content_type == JSON:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != JSON and not (media_type.startswith("application/") and media_type.endswith("+json")):
        raise ApiError(falcon.HTTP_415, "unsupported_media_type",
                       f"Content-Type must be application/json, got {content_type!r}")


class HealthResource:
    """For ALB target health checks: cheap, unauthenticated, no model call."""

    def __init__(self, model: LoadedModel | None) -> None:
        self._body = orjson.dumps({"status": "healthy", "model_loaded": model is not None})

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._body
        resp.content_type = JSON


class FraudScoreResource:
    def __init__(self, model: LoadedModel, validator: TransactionValidator, keys: ApiKeys, threshold: int,
                 observe: Callable[[int, bool], None] = lambda score, is_fraud: None) -> None:
        self._predict_row = model.predict_row
        self._version = model.version
        self._validator = validator
        self._is_valid = validator.is_valid
        self._keys = keys
        self._threshold = threshold
        self._row = itemgetter(*FEATURES)
        self._observe = observe  # metrics: score distribution and fraud rate

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_key(self._keys, req)
        require_json(req)
        transaction = decode(req.bounded_stream.read())
        if not self._is_valid(transaction):
            raise invalid_body(self._validator.violations(transaction))
        score = round(100.0 * self._predict_row(self._row(transaction)))
        is_fraud = score >= self._threshold
        self._observe(score, is_fraud)
        resp.data = orjson.dumps({"fraud-score": score, "is-fraud": is_fraud, "model-version": self._version})
        resp.content_type = JSON
