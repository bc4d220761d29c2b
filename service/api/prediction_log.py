"""The API's side of the prediction log: a request's entry (what its records need to know of it)
and GET /health/prediction-log."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import falcon
import orjson

from service.api.deadline import DUE
from service.api.errors import JSON
from service.engine.scoring import Scoring
from service.predlog import status
from service.predlog.sink import Entry


def entry(
    req: falcon.Request, scoring: Scoring, key: int, transaction_ids: Any = None, explained: bool = False
) -> Entry | None:
    """The request's prediction-log entry; None when the log is off. A request without an
    X-Request-ID (nginx always sets one) gets one here, which its answer then echoes."""
    log = scoring.log
    if log is None:
        return None
    env = req.env
    request_id = env.get("HTTP_X_REQUEST_ID")
    if not request_id:
        request_id = env["HTTP_X_REQUEST_ID"] = uuid.uuid4().hex
    client = None
    if log.client_address:
        forwarded = req.get_header("X-Forwarded-For")
        client = forwarded.rsplit(",", 1)[-1].strip() if forwarded else req.remote_addr
    context = req.context
    return log.entry(
        request_id,
        req.uri_template,
        key,
        transaction_ids,
        explained,
        context.stages.start,  # perf_counter_ns()'s clock, as the log's service time counts
        env.get(DUE),
        client,
        context.trace_id,
    )


class PredictionLogStatusResource:
    """GET /health/prediction-log: the log's state (spool, compactor, drops), apart from /health,
    which must not fail because the log does: 200 when it is keeping up, 503 when records are
    being dropped or wait too long."""

    def __init__(self, directory: Path, max_bytes: int, segment_seconds: int) -> None:
        self._directory = directory
        self._max_bytes = max_bytes
        self._segment_seconds = segment_seconds

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = status.describe(self._directory, self._max_bytes, self._segment_seconds, time.time())
        resp.status = falcon.HTTP_200 if not state["problems"] else falcon.HTTP_503
        resp.data = orjson.dumps(state)
        resp.content_type = JSON
