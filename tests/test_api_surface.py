"""The HTTP surface as an outsider sees it: the OpenAPI document says each fact once and only where
it applies, HEAD goes wherever GET does, and every other method is a 405 that names what is
allowed (the app's, and nginx's own)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import falcon.testing
import pytest

import service
from service.api.app import create_app
from service.api.routes import served
from service.core.settings import from_mapping
from service.engine.loader import load_model
from tests.helpers import TEST_KEY, Client

DEADLINE_HEADER = "X-Deadline-Ms"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def app_settings(small_model):
    return from_mapping({"API_KEY": TEST_KEY, "MODEL_PATH": str(small_model[0])})


@pytest.fixture(scope="module")
def app(app_settings):
    return create_app(app_settings, load_model(app_settings))


@pytest.fixture(scope="module")
def document(app) -> dict:
    return falcon.testing.TestClient(app).simulate_get("/openapi.json").json


def operations(document: dict):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def takes_deadline(operation: dict) -> bool:
    return any(
        p.get("$ref", "").endswith(f"/{DEADLINE_HEADER}") or p.get("name") == DEADLINE_HEADER
        for p in operation.get("parameters", [])
    )


def test_each_503_description_says_deadline_exceeded_once(document):
    for path, method, operation in operations(document):
        description = operation["responses"].get("503", {}).get("description", "")
        assert description.count("deadline_exceeded") <= 1, (path, method, description)


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/health", "/v2"])
def test_routes_never_shed_document_no_deadline(document, path):
    operation = document["paths"][path]["get"]
    assert not takes_deadline(operation), operation["parameters"]
    assert "deadline_exceeded" not in operation["responses"].get("503", {}).get("description", "")


def test_head_answers_wherever_get_does_with_the_same_status_and_no_body(app, document):
    client = falcon.testing.TestClient(app, headers={"X-API-Key": TEST_KEY})
    paths = [
        p.replace("{name}", "fraud").replace("{version}", "test-3") for p, m, _ in operations(document) if m == "get"
    ]
    paths += ["/openapi.json", "/docs", "/docs/static/swagger-ui.css", "/metrics"]
    for path in paths:
        get, head = client.simulate_get(path), client.simulate_head(path)
        assert head.status_code == get.status_code, (path, head.status, head.text)
        assert head.content == b"" and head.headers["Content-Type"] == get.headers["Content-Type"], path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_docs_assets_answer_get_and_head_only(app, method):
    reply = falcon.testing.TestClient(app).simulate_request(method, "/docs/static/swagger-ui.css")
    assert reply.status_code == 405 and reply.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert reply.json["error"] == "method_not_allowed"


def test_head_through_nginx(client: Client):
    for path in ("/health", "/v2/health/live", "/openapi.json", "/v1/model-info", "/v2/models/fraud"):
        get, head = client.request("GET", path), client.request("HEAD", path)
        assert head.status == get.status == 200, (path, head.status)
        assert head.raw == b"" and head.headers["Content-Length"] == get.headers["Content-Length"], path


def concrete(template: str) -> str:
    return template.replace("{name}", "fraud").replace("{version}", "test-3").replace("{asset}", "swagger-ui.css")


def test_every_405_of_the_app_names_what_is_allowed(app):
    client = falcon.testing.TestClient(app, headers={"X-API-Key": TEST_KEY})
    for route in served(feature_store=False):
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - set(route.methods):
            reply = client.simulate_request(method, concrete(route.path))
            assert reply.status_code == 405, (method, route.path, reply.status)
            assert reply.headers["Allow"] == ", ".join(route.allowed), (method, route.path)


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PATCH"])
def test_every_405_through_nginx_names_what_the_app_allows(client: Client, method):
    """TRACE and CONNECT are nginx's own 405s; PATCH reaches the app."""
    for route in served(feature_store=False):
        reply = client.request(method, concrete(route.path))
        assert reply.status == 405, (method, route.path, reply.status)
        assert reply.headers["Allow"] == ", ".join(route.allowed), (method, route.path, reply.headers["Allow"])
        assert "error" in reply.json


def test_the_version_is_written_once(document, app_settings):
    """pyproject.toml's; the package, the settings' default and the document read it."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert service.__version__ == version == app_settings.app_version == document["info"]["version"]
    typed = [
        p for p in (ROOT / "service").rglob("*.py") if re.search(rf"[\"']{re.escape(version)}[\"']", p.read_text())
    ]
    assert typed == [], "the version is typed again"
