"""The Falcon application: routes, error shape, request id and timing headers."""

from __future__ import annotations

import time
import uuid

import falcon

from service import metrics
from service.auth import ApiKeys
from service.errors import handle_unexpected, serialize_error
from service.loader import LoadedModel
from service.resources import FraudScoreResource, HealthResource
from service.schema import TransactionValidator
from service.settings import Settings


class RequestContext:
    """Echoes the request id (nginx sets one on every request) and the app's own time."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool) -> None:
        resp.set_header("X-Request-ID", req.get_header("X-Request-ID") or uuid.uuid4().hex)
        resp.set_header("X-Response-Time-Ms", f"{(time.perf_counter() - req.context.started) * 1000.0:.3f}")


def create_app(settings: Settings, model: LoadedModel, validator: TransactionValidator) -> falcon.App:
    # RequestMetrics first: its process_response runs last, so it counts the final status.
    app = falcon.App(middleware=[metrics.RequestMetrics(), RequestContext()], cors_enable=False)
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
    keys = ApiKeys(settings.api_keys)
    app.add_route("/health", HealthResource(model))
    app.add_route("/v1/fraud-score", FraudScoreResource(model, validator, keys, settings.fraud_threshold,
                                                        observe=metrics.observe_score))
    app.add_route("/metrics", metrics.MetricsResource())  # nginx serves it to internal networks only
    metrics.set_model_version(model.version)
    return app
