"""The Falcon application: routes, error shape, request id and timing headers.

Built in the gunicorn master (at start, and again on a model rollout): everything a request
needs is prepared here, once."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import uuid
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import falcon

from service.api.auth import ApiKeys
from service.api.budget import RowBudget
from service.api.by_id import ByIdBatchResource, ByIdScoreResource, StoredRows, StoreStatusResource
from service.api.deadline import QUEUE_WAIT
from service.api.errors import handle_unexpected, serialize_error
from service.api.openapi import DOCS_PAGE, build_openapi
from service.api.prediction_log import PredictionLogStatusResource
from service.api.resources import (
    BatchScoreResource,
    DriftResource,
    FraudScoreResource,
    ModelUnavailableResource,
    StaticJson,
)
from service.api.routes import mount
from service.api.v2 import add_routes as add_v2_routes
from service.contract.schema import TransactionValidator, batch_document, load_schema_document
from service.core.settings import Settings
from service.engine.challenger import Challenger, describe
from service.engine.drift import DriftCounter
from service.engine.loader import LoadedModel
from service.engine.ood import OutOfDistribution
from service.engine.scoring import Scoring
from service.predlog.sink import PredictionLog, key_id
from service.predlog.spool import Spool
from service.predlog.status import StatusCollector
from service.store.feature_store import FeatureStore, StoreConfig
from service.telemetry import metrics, multiproc
from service.telemetry import stages as timings
from service.telemetry.trace_context import HEADER as TRACE_HEADER
from service.telemetry.trace_context import server_span, trace_id
from service.telemetry.tracing import Tracing

log = logging.getLogger(__name__)
clock = timings.perf_counter_ns
MODEL_VERSION_ATTRIBUTE = "fraud.model.version"  # on every exported span: the champion that answered
_pid: list[str] = []  # this process's id as a header value, once per worker
os.register_at_fork(after_in_child=_pid.clear)


def _worker_pid() -> str:
    if not _pid:
        _pid.append(str(os.getpid()))
    return _pid[0]


class RequestContext:
    """The app's only middleware (each one is a call per request and per hook): echoes the request
    id (nginx sets one on every request) and the app's own time; answers with its span in the
    request's trace (traceresponse); tells nginx which worker answered
    (nginx logs it and hides it from clients), to correlate with its logs; then counts and times the
    request in the metrics, with the final status. A scoring request's stages
    (service/telemetry/stages.py: `req.context.stages`, which its resource stamps) go to the
    Server-Timing header and the stage histogram."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        context = req.context
        context.stages = timings.Stages(clock())
        context.trace_id = trace_id(req.env)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        context = req.context
        stages = context.stages
        elapsed = stages.finish(req.env.get(QUEUE_WAIT)) / 1e9
        elapsed_ms = f"{elapsed * 1000.0:.3f}"
        resp.set_header("X-Request-ID", req.env.get("HTTP_X_REQUEST_ID") or uuid.uuid4().hex)
        resp.set_header("X-Response-Time-Ms", elapsed_ms)
        resp.set_header("X-Worker-PID", _pid[0] if _pid else _worker_pid())
        resp.set_header(TRACE_HEADER, server_span(context.trace_id))
        route = req.uri_template
        metrics.record_request(route, req.method, resp.status_code, elapsed)
        if stages.read:  # a scoring route's resource took it
            resp.set_header(timings.HEADER, metrics.record_stages(route, stages, elapsed_ms))


class TracedRequestContext(RequestContext):
    """RequestContext, and a server span exported per request (service/telemetry/tracing.py), with
    the request's stages as attributes: the answer's traceresponse names that span, flagged 01 when
    it is sampled. Used only when tracing is on, so that the app pays nothing for it otherwise."""

    def __init__(self, tracing: Tracing, attributes: dict[str, Any]) -> None:
        self._tracing = tracing
        self._attributes = attributes  # the same on every span of this app (the model's version)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        super().process_request(req, resp)
        req.context.span = self._tracing.exporter.begin(req.env, req.context.trace_id, req.method)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        super().process_response(req, resp, resource, req_succeeded)
        span = req.context.get("span")
        if span is not None:
            outcome = (req.method, req.uri_template, resp.status_code, self._attributes, req.context.stages.durations)
            resp.set_header(TRACE_HEADER, self._tracing.exporter.end(span, *outcome))


class DocsPage:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.text = DOCS_PAGE
        resp.content_type = falcon.MEDIA_HTML


class DocsAssets:
    """The docs page's own Swagger UI files (no CDN), read once: GET and HEAD only, as any route."""

    def __init__(self, folder: Traversable) -> None:
        self._files = {
            f.name: (f.read_bytes(), mimetypes.guess_type(f.name)[0] or "application/octet-stream")
            for f in folder.iterdir()
            if f.is_file()
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        found = self._files.get(asset)
        if found is None:
            raise falcon.HTTPNotFound()
        resp.data, resp.content_type = found


def model_info(
    model: LoadedModel,
    settings: Settings,
    ood: OutOfDistribution,
    challenger: LoadedModel | None = None,
    challenger_refused: str | None = None,
) -> dict[str, Any]:
    manifest = model.manifest
    scorer = model.scorer
    return {
        "model-version": model.version,
        "estimator": manifest.get("estimator") or type(getattr(scorer, "estimator", scorer)).__name__,
        "scorer": "forest-walker" if hasattr(scorer, "explain_row") else "sklearn",
        "trained_at": manifest.get("trained_at"),
        "data_source": manifest.get("data_source"),
        "sklearn_version": manifest.get("sklearn_version"),
        "n_trees": getattr(scorer, "n_trees", None),
        "n_nodes": getattr(scorer, "n_nodes", None),
        "max_depth": getattr(scorer, "max_depth", None),
        "features": manifest.get("features"),
        "feature_importances": manifest.get("feature_importances"),
        "metrics": manifest.get("metrics") or {},
        "threshold": model.threshold,
        "ood": ood.summary,
        "sha256": model.forest_sha256,
        "estimator_sha256": (manifest.get("files", {}).get("estimator") or {}).get("sha256"),
        "champion": describe(model),
        "challenger": (
            {**describe(challenger), "log_sample": settings.challenger_log_sample}
            if challenger
            else {"refused": challenger_refused}
            if challenger_refused
            else None
        ),
    }


def drift_counter(model: LoadedModel) -> DriftCounter | None:
    """Counts this model's scored rows into its training bins, in the metrics directory when
    there is one (gunicorn), else in this process."""
    reference = model.manifest.get("drift")
    if not reference:
        return None
    key = model.forest_sha256 or hashlib.sha256(model.version.encode()).hexdigest()
    return DriftCounter(reference, key[:16], os.environ.get(multiproc.ENV))


def create_app(
    settings: Settings,
    model: LoadedModel | None,
    unavailable_reason: str = "",
    budget: RowBudget | None = None,
    *,
    challenger: LoadedModel | None = None,
    challenger_refused: str | None = None,
    spool: Spool | None = None,
    tracing: Tracing | None = None,
) -> falcon.App:
    """`budget` is the per-key row budget shared by every worker; the gunicorn master makes it
    once (service/runtime/wsgi.py) so that it outlives rollouts. Without one, the app gets its own.
    `spool` likewise is the prediction log's (each worker opens its own segment after fork); with
    PREDICTION_LOG_DIR set and none given, the app makes one. `tracing`, when given, exports a span
    per request (each worker starts its exporter after fork)."""
    context = (
        TracedRequestContext(tracing, {MODEL_VERSION_ATTRIBUTE: model.version} if model else {})
        if tracing
        else RequestContext()
    )
    app = falcon.App(middleware=[context])
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
    keys = ApiKeys(settings.api_keys)
    budget = budget or RowBudget.for_settings(settings)
    document = load_schema_document()

    mount(
        app,
        "/openapi.json",
        StaticJson(
            build_openapi(
                document,
                settings.batch_max,
                settings.app_version,
                deadline_ms=settings.request_deadline_ms,
                by_id=bool(settings.feature_store_url),
            )
        ),
    )
    mount(app, "/docs", DocsPage())
    mount(app, "/docs/static/{asset}", DocsAssets(resources.files("service.api").joinpath("static/swagger-ui")))
    drift = drift_counter(model) if model is not None else None
    # nginx serves it to internal networks only
    log_status = (
        [StatusCollector(settings.prediction_log_dir, settings.prediction_log_max_bytes)]
        if settings.prediction_log_dir
        else []
    )
    mount(app, "/metrics", metrics.MetricsResource(([drift] if drift else []) + log_status))
    if settings.prediction_log_dir:
        mount(
            app,
            "/health/prediction-log",
            PredictionLogStatusResource(
                settings.prediction_log_dir, settings.prediction_log_max_bytes, settings.prediction_log_segment_seconds
            ),
        )

    if model is None:
        mount(
            app,
            "/health",
            StaticJson(
                {"status": "unhealthy", "model_loaded": False, "reason": unavailable_reason}, status=falcon.HTTP_503
            ),
        )
        mount(app, "/v1/fraud-score", ModelUnavailableResource(unavailable_reason, "post"))
        mount(app, "/v1/fraud-score/batch", ModelUnavailableResource(unavailable_reason, "post"))
        mount(app, "/v1/model-info", ModelUnavailableResource(unavailable_reason, "get"))
        add_v2_routes(app, settings.app_version, keys, settings.batch_max, None, budget, unavailable_reason)
        mount(app, "/v1/drift", ModelUnavailableResource(unavailable_reason, "get"))
        mount(app, "/v1/drift/reset", ModelUnavailableResource(unavailable_reason, "post"))
        if settings.feature_store_url:
            mount(app, "/v1/fraud-score/by-id", ModelUnavailableResource(unavailable_reason, "post"))
            mount(app, "/v1/fraud-score/by-id/batch", ModelUnavailableResource(unavailable_reason, "post"))
            mount(app, "/health/feature-store", StoreStatusResource(feature_store(settings)))  # model or not
        return app

    ood = OutOfDistribution.for_model(model.manifest, settings.ood_z)
    if "note" in ood.summary:
        log.warning("out-of-distribution flags: %s", ood.summary["note"])
    threshold = model.threshold["value"]
    beside = None
    if challenger is not None:
        beside = Challenger(
            challenger,
            model.version,
            threshold,
            settings.challenger_log_sample,
            observe_one=metrics.observe_challenger,
            observe_many=metrics.observe_challenger_rows,
        )
    scoring = Scoring(
        model,
        ood,
        threshold,
        observe=metrics.observe_score,
        observe_many=metrics.observe_scores,
        drift=drift,
        challenger=beside,
        log=prediction_log(settings, model, beside, spool),
    )
    metrics.set_model_version(model.version)
    metrics.set_ood_heldout_rate(ood.summary.get("heldout_rate"))
    mount(app, "/health", StaticJson({"status": "healthy", "model_loaded": True}))
    mount(app, "/v1/fraud-score", FraudScoreResource(scoring, TransactionValidator(document), keys, budget))
    mount(
        app,
        "/v1/fraud-score/batch",
        BatchScoreResource(
            scoring,
            TransactionValidator(batch_document(document, settings.batch_max)),
            keys,
            budget,
            settings.batch_max,
        ),
    )
    mount(
        app, "/v1/model-info", StaticJson(model_info(model, settings, ood, challenger, challenger_refused), keys=keys)
    )
    drift_resource = DriftResource(drift, keys)
    mount(app, "/v1/drift", drift_resource)
    mount(app, "/v1/drift/reset", drift_resource, "reset")
    add_v2_routes(app, settings.app_version, keys, settings.batch_max, scoring, budget)
    if settings.feature_store_url:
        add_by_id_routes(app, settings, scoring, TransactionValidator(document), keys, budget)
    return app


def add_by_id_routes(
    app: falcon.App,
    settings: Settings,
    scoring: Scoring,
    transaction: TransactionValidator,
    keys: ApiKeys,
    budget: RowBudget,
) -> None:
    store = feature_store(settings)
    stored = StoredRows(store, transaction)
    mount(app, "/v1/fraud-score/by-id", ByIdScoreResource(scoring, stored, keys, budget))
    mount(app, "/v1/fraud-score/by-id/batch", ByIdBatchResource(scoring, stored, keys, budget, settings.batch_max))
    mount(app, "/health/feature-store", StoreStatusResource(store))


def prediction_spool(settings: Settings) -> Spool | None:
    """The spool of PREDICTION_LOG_DIR, None when the log is off; it opens nothing until a worker writes."""
    if settings.prediction_log_dir is None:
        return None
    return Spool(
        settings.prediction_log_dir,
        settings.prediction_log_max_bytes,
        settings.prediction_log_segment_bytes,
        settings.prediction_log_segment_seconds,
        on_written=metrics.count_logged,
        on_dropped=metrics.count_log_dropped,
    )


def prediction_log(
    settings: Settings, model: LoadedModel, challenger: Challenger | None, spool: Spool | None
) -> PredictionLog | None:
    spool = spool or prediction_spool(settings)
    if spool is None:
        return None
    return PredictionLog(
        spool,
        model_version=model.version,
        model_sha256=model.forest_sha256,
        threshold=model.threshold["value"],
        challenger_version=challenger.version if challenger else None,
        challenger_threshold=challenger.threshold if challenger else None,
        sample=settings.prediction_log_sample,
        key_ids=[key_id(key) for key in settings.api_keys],
        client_address=settings.prediction_log_client_address,
    )


def feature_store(settings: Settings) -> FeatureStore:
    """The configured store's client (nothing connects until a worker's first lookup)."""
    return FeatureStore(
        StoreConfig(
            settings.feature_store_url,
            settings.feature_store_prefix,
            settings.feature_store_timeout_ms / 1000,
            settings.feature_store_spin_us / 1e6,
        ),
        observe_fetch=metrics.observe_fetch,
    )
