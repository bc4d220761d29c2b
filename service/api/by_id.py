"""Scoring by transaction id: the features come from the online feature store, not the request.

`POST /v1/fraud-score/by-id` and `…/by-id/batch` answer exactly what `POST /v1/fraud-score`
answers for the same features (the same Scoring object, the same validation of the values), plus
the id. The routes exist only when FEATURE_STORE_URL is set."""

from __future__ import annotations

import falcon
import numpy as np

from service.api.auth import ApiKeys
from service.api.body import decode
from service.api.budget import RowBudget
from service.api.deadline import time_left_s
from service.api.errors import ApiError, invalid_body
from service.api.prediction_log import entry as log_entry
from service.api.resources import charge_batch, log_ids, require_json, require_key, respond, wants_explanation
from service.contract.schema import (
    ID_FIELD,
    IDS_FIELD,
    TransactionValidator,
    by_id_batch_document,
    by_id_document,
    compile_flat_numbers_matrix,
    compile_flat_numbers_row,
)
from service.core.features import FEATURES
from service.engine.scoring import Scoring
from service.store.feature_record import RecordError, as_transaction, decode_record, decode_records
from service.store.feature_store import FeatureStore, StoreUnavailable
from service.telemetry.stages import clock

STORE_RETRY_AFTER_SECONDS = "1"
MISSING_NAMED = 10  # ids named in a 404 for a batch; the rest are counted


class StoredRows:
    """From ids to validated rows: one round trip to the store, then each record checked as the
    HTTP contract checks a posted transaction."""

    def __init__(self, store: FeatureStore, transaction: TransactionValidator) -> None:
        self._fetch = store.fetch
        self._kinds = store.kinds
        self._timeout_s = store.config.timeout_s
        self._transaction = transaction
        # The contract's check on the unpacked values (no dict built); the dict validator only
        # where the schema has a shape it does not cover, and to say what a bad record breaks.
        self._valid_row = compile_flat_numbers_row(transaction.document, FEATURES) or (
            lambda row: transaction.is_valid(as_transaction(row))
        )
        self._all_valid = compile_flat_numbers_matrix(transaction.document, FEATURES) or (
            lambda X: all(map(self._valid_row, X.tolist()))
        )

    def rows(self, ids: list[str], env: dict) -> list[tuple[float, ...]]:
        """`env` is the request's WSGI environ: the lookup waits no longer than its deadline allows."""
        return [self._row(i, record) for i, record in zip(ids, self._records(ids, env), strict=True)]

    def matrix(self, ids: list[str], env: dict) -> np.ndarray:
        """rows() as a float64 matrix, checked at once; a bad record is named as rows() names it."""
        records = self._records(ids, env)
        X = decode_records(records)
        if X is not None and self._all_valid(X):
            return X
        return np.array([self._row(i, record) for i, record in zip(ids, records, strict=True)], dtype=np.float64)

    def _records(self, ids: list[str], env: dict) -> list[bytes]:
        try:
            records = self._fetch(ids, time_left_s(env, self._timeout_s))
        except StoreUnavailable as e:
            raise _unavailable(e) from None
        missing = [i for i, record in zip(ids, records, strict=True) if record is None]
        if missing:
            self._refuse_missing(missing, env)
        return records

    def _refuse_missing(self, missing: list[str], env: dict) -> None:
        """404 naming the ids without a record; when there are none such, 422 for a key holding
        another Redis type (a hash, a list: something else under the prefix), which GET and MGET
        read as no record. An unknown id goes first, as it goes before a bad record."""
        try:
            kinds = self._kinds(missing, time_left_s(env, self._timeout_s))
        except StoreUnavailable as e:
            raise _unavailable(e) from None
        # A string: written since the lookup, which found none.
        unknown = [i for i, kind in zip(missing, kinds, strict=True) if kind in ("none", "string")]
        if not unknown:
            raise ApiError(
                falcon.HTTP_422,
                "invalid_record",
                f"transaction {missing[0]!r}: the store holds a {kinds[0]} under its key, not a record",
            )
        named = ", ".join(repr(i) for i in unknown[:MISSING_NAMED])
        more = f" and {len(unknown) - MISSING_NAMED} more" if len(unknown) > MISSING_NAMED else ""
        noun = "transaction" if len(unknown) == 1 else "transactions"
        raise ApiError(falcon.HTTP_404, "unknown_transaction", f"no features stored for {noun} {named}{more}")

    def _row(self, transaction_id: str, record: bytes) -> tuple[float, ...]:
        try:
            row = decode_record(record)
        except RecordError as e:
            raise ApiError(falcon.HTTP_422, "invalid_record", f"transaction {transaction_id!r}: {e}") from None
        if not self._valid_row(row):
            violation = self._transaction.violations(as_transaction(row))[0]
            raise ApiError(
                falcon.HTTP_422,
                "invalid_record",
                f"transaction {transaction_id!r}: the stored {violation.describe()}",
                [violation],
            )
        return row


def _unavailable(error: StoreUnavailable) -> ApiError:
    return ApiError(
        falcon.HTTP_503, "feature_store_unavailable", str(error), headers={"Retry-After": STORE_RETRY_AFTER_SECONDS}
    )


class ByIdScoreResource:
    def __init__(self, scoring: Scoring, stored: StoredRows, keys: ApiKeys, budget: RowBudget) -> None:
        self._scoring = scoring
        self._stored = stored
        self._request = TransactionValidator(by_id_document())
        self._keys = keys
        self._spend = budget.spend

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = require_key(self._keys, req)
        self._spend(key, 1)
        require_json(req)
        body = decode(req.bounded_stream.read())
        if not self._request.is_valid(body):
            raise invalid_body(self._request.violations(body))
        transaction_id = body[ID_FIELD]
        stages = req.context.stages
        stages.read = clock()
        (row,) = self._stored.rows([transaction_id], req.env)
        stages.fetched = clock()
        ids = log_ids(req, self._scoring)
        explain = wants_explanation(req, self._scoring)
        logged = log_entry(req, self._scoring, key, transaction_id, explain) if self._scoring.log else None
        score = self._scoring.one_explained if explain else self._scoring.one
        result = score(row, ids, logged, stages)
        stages.scored = clock()
        result[ID_FIELD] = transaction_id
        respond(resp, result)


class ByIdBatchResource:
    def __init__(self, scoring: Scoring, stored: StoredRows, keys: ApiKeys, budget: RowBudget, batch_max: int) -> None:
        self._scoring = scoring
        self._stored = stored
        self._request = TransactionValidator(by_id_batch_document(batch_max))
        self._keys = keys
        self._budget = budget
        self._batch_max = batch_max

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = require_key(self._keys, req)
        require_json(req)
        explain = wants_explanation(req, self._scoring)
        body = decode(req.bounded_stream.read(), lambda: self._budget.spend(key, 1))
        ids = body.get(IDS_FIELD) if isinstance(body, dict) else None
        charge_batch(self._budget, key, ids, self._batch_max, "transaction ids")
        if not self._request.is_valid(body):
            raise invalid_body(self._request.violations(body))
        stages = req.context.stages
        stages.read = clock()
        X = self._stored.matrix(ids, req.env)
        stages.fetched = clock()
        logged = log_entry(req, self._scoring, key, ids, explain) if self._scoring.log else None
        # Explanations name each feature's value: Python floats, as a posted batch gives them.
        rows = X.tolist() if explain else X
        results = self._scoring.many(rows, explain, log_ids(req, self._scoring), logged, stages)
        stages.scored = clock()
        for transaction_id, result in zip(ids, results, strict=True):
            result[ID_FIELD] = transaction_id
        respond(resp, {"results": results, "model-version": self._scoring.version})


class StoreStatusResource:
    """GET /health/feature-store: whether the store answers, apart from /health (which a load
    balancer uses and which must not fail because the store does)."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reachable, latency_ms = self._store.reachable()
        config = self._store.config
        timeout_ms = round(config.timeout_s * 1000.0, 3)
        resp.status = falcon.HTTP_200 if reachable else falcon.HTTP_503
        respond(
            resp,
            {
                "reachable": reachable,
                "latency_ms": latency_ms,
                "within_timeout": reachable and latency_ms <= timeout_ms,
                "url": config.display_url,
                "prefix": config.prefix,
                "timeout_ms": timeout_ms,
            },
        )
