"""The route table: every path the app serves, its methods and what applies to it.

Falcon's routing (`mount` refuses a path or a method not listed here), the deadline guard
(service/api/deadline.py), the OpenAPI document's paths (service/api/openapi.py) follow from it;
nginx's `location` blocks, its queue exemptions and the `Allow` of its own 405s are checked against
it (tests/test_routes.py)."""

from __future__ import annotations

from dataclasses import dataclass

import falcon


@dataclass(frozen=True)
class Route:
    path: str
    methods: tuple[str, ...]  # what the app answers, HEAD aside: HEAD goes wherever GET does
    deadline: bool = False  # shed once its budget is spent, and takes X-Deadline-Ms
    probe: bool = False  # a health check or /metrics: never queued behind scoring in nginx
    large_body: bool = False  # nginx reads a body of up to BATCH_MAX_BODY_SIZE (else CLIENT_MAX_BODY_SIZE)
    documented: bool = True  # in /openapi.json
    feature_store: bool = False  # served only when FEATURE_STORE_URL is set
    prediction_log: bool = False  # served only when PREDICTION_LOG_DIR is set

    @property
    def answers(self) -> frozenset[str]:
        """The methods answered: the table's, and HEAD wherever GET."""
        return frozenset({*self.methods, *(("HEAD",) if "GET" in self.methods else ())})

    @property
    def allowed(self) -> tuple[str, ...]:
        """The methods a 405 names in its Allow header (Falcon's order: sorted, then OPTIONS)."""
        return (*sorted(self.answers), "OPTIONS")


_V2_MODEL = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")

ROUTES: tuple[Route, ...] = (
    Route("/openapi.json", ("GET",), documented=False),
    Route("/docs", ("GET",), documented=False),
    Route("/docs/static/{asset}", ("GET",), documented=False),
    Route("/metrics", ("GET",), probe=True, documented=False),
    Route("/health", ("GET",), probe=True),
    Route("/health/feature-store", ("GET",), feature_store=True),
    Route("/health/prediction-log", ("GET",), documented=False, prediction_log=True),
    Route("/v1/fraud-score", ("POST",), deadline=True),
    Route("/v1/fraud-score/batch", ("POST",), deadline=True, large_body=True),
    Route("/v1/fraud-score/by-id", ("POST",), deadline=True, feature_store=True),
    Route("/v1/fraud-score/by-id/batch", ("POST",), deadline=True, large_body=True, feature_store=True),
    Route("/v1/model-info", ("GET",), deadline=True),
    Route("/v1/drift", ("GET",), deadline=True),
    Route("/v1/drift/reset", ("POST",), deadline=True),
    # nginx's /v2 location takes the large body for the whole protocol.
    Route("/v2", ("GET",), large_body=True),
    Route("/v2/health/live", ("GET",), probe=True, large_body=True),
    Route("/v2/health/ready", ("GET",), probe=True, large_body=True),
    *(
        Route(f"{model}{suffix}", (method,), deadline=True, large_body=True)
        for model in _V2_MODEL
        for suffix, method in (("", "GET"), ("/ready", "GET"), ("/infer", "POST"))
    ),
)
BY_PATH = {route.path: route for route in ROUTES}
DEADLINE_ROUTES = frozenset(route.path for route in ROUTES if route.deadline)
# What the deadline guard sheds: each guarded route's methods (any other is a 405, which costs nothing).
SHED_METHODS = {route.path: route.answers for route in ROUTES if route.deadline}


def served(feature_store: bool, prediction_log: bool = False) -> tuple[Route, ...]:
    """The routes an app serves, with or without a feature store and a prediction log."""
    return tuple(
        route
        for route in ROUTES
        if (feature_store or not route.feature_store) and (prediction_log or not route.prediction_log)
    )


def responders(resource: object, suffix: str | None = None) -> set[str]:
    """The HTTP methods a Falcon resource answers (for the suffix Falcon is given)."""
    tail = f"_{suffix}" if suffix else ""
    return {
        method for method in falcon.COMBINED_METHODS if callable(getattr(resource, f"on_{method.lower()}{tail}", None))
    }


def mount(app: falcon.App, path: str, resource: object, suffix: str | None = None) -> None:
    """app.add_route for a path of the table, answering HEAD wherever it answers GET (Falcon strips
    the body of a HEAD answer and keeps its headers). A path or a method the table does not list is
    a programming error, found when the app is built."""
    route = BY_PATH.get(path)
    if route is None:
        raise ValueError(f"{path} is not in the route table (service/api/routes.py)")
    tail = f"_{suffix}" if suffix else ""
    get = getattr(resource, f"on_get{tail}", None)
    if get is not None:
        setattr(resource, f"on_head{tail}", get)
    answered = responders(resource, suffix) - {"HEAD"}
    if answered != set(route.methods):
        raise ValueError(f"{path}: the resource answers {sorted(answered)}, the route table says {list(route.methods)}")
    app.add_route(path, resource, suffix=suffix)
