"""The route table (service/api/routes.py) is what the app serves, what /openapi.json describes,
what the deadline guard sheds and how nginx's locations treat each path."""

from __future__ import annotations

import re

import falcon.inspect
import pytest

from service.api.app import create_app
from service.api.deadline import guarded_routes
from service.api.openapi import build_openapi
from service.api.routes import DEADLINE_ROUTES, ROUTES, Route, mount, served
from service.contract.schema import load_schema_document
from service.core.settings import from_mapping
from service.engine.loader import load_model
from stack.launcher import TEMPLATE
from tests.helpers import TEST_KEY, blocks, location_for, nginx_locations


@pytest.fixture(scope="module")
def settings(small_model):
    return from_mapping({"API_KEY": TEST_KEY, "MODEL_PATH": str(small_model[0])})


def table(routes: tuple[Route, ...]) -> dict[str, set[str]]:
    return {route.path: set(route.answers) for route in routes}


def served_by(app: falcon.App) -> dict[str, set[str]]:
    return {
        route.path: {m.method for m in route.methods if not m.internal and m.method != "OPTIONS"}
        for route in falcon.inspect.inspect_routes(app)
    }


@pytest.mark.parametrize("store", [False, True])
@pytest.mark.parametrize("with_model", [True, False])
def test_the_app_serves_the_route_table(settings, small_model, store, with_model):
    extra = {"FEATURE_STORE_URL": "redis://127.0.0.1:1/0"} if store else {}
    settings = from_mapping({"API_KEY": TEST_KEY, "MODEL_PATH": str(small_model[0]), **extra})
    app = create_app(settings, load_model(settings)) if with_model else create_app(settings, None, "no model")
    assert served_by(app) == table(served(store))
    assert guarded_routes(app) == DEADLINE_ROUTES & set(table(served(store)))


def test_mount_refuses_what_the_table_does_not_list():
    class Get:
        def on_get(self, req, resp):
            pass

    with pytest.raises(ValueError, match="not in the route table"):
        mount(falcon.App(), "/v1/elsewhere", Get())
    with pytest.raises(ValueError, match="the route table says"):
        mount(falcon.App(), "/v1/fraud-score", Get())


@pytest.mark.parametrize("store", [False, True])
def test_the_openapi_document_describes_the_route_table(store):
    document = build_openapi(load_schema_document(), 7, "test", deadline_ms=150, by_id=store)
    described = {path: {m.upper() for m in methods} for path, methods in document["paths"].items()}
    assert described == {route.path: set(route.methods) for route in served(store) if route.documented}


def test_nginx_gives_each_route_the_body_limit_and_queue_the_table_says():
    template = TEMPLATE.read_text()
    locations = nginx_locations(template)
    named = {name.removeprefix("= ") for name in locations if name.startswith("= ") and "/_errors/" not in name}
    assert named <= {route.path for route in ROUTES}, "an exact location names a path the app does not serve"
    for route in ROUTES:
        body = locations[location_for(locations, re.sub(r"\{[^}]*\}", "x", route.path))]
        large = "client_max_body_size ${BATCH_MAX_BODY_SIZE};" in body
        assert large == route.large_body, route.path
    queue = blocks(template, r"\bmap\s+\$uri\s+\$(scoring_queue_key)")["scoring_queue_key"]
    exempt = {line.split()[0] for line in queue.strip().splitlines() if line.split()[1:] == ['"";']}
    assert exempt == {route.path for route in ROUTES if route.probe}
