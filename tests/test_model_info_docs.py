"""Model information, the OpenAPI document and the docs page (in a real headless Chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi

from service.contract.schema import load_schema_document
from service.core.artifacts import ArtifactPaths, sha256_file
from service.core.features import FEATURES
from tests.helpers import ARTIFACTS, Client, assert_error


def test_model_info(client: Client, served_model, local_stack):
    reply = client.request("GET", "/v1/model-info")
    assert reply.status == 200, reply.raw
    info = reply.json
    estimator = served_model[1]
    paths = ArtifactPaths.for_model(served_model[0])
    assert info["model-version"] == "test-3"
    assert info["estimator"] == "RandomForestClassifier" and info["scorer"] == "forest-walker"
    assert info["n_trees"] == len(estimator.estimators_)
    assert info["n_nodes"] == sum(t.tree_.node_count for t in estimator.estimators_)
    assert info["max_depth"] == max(t.tree_.max_depth for t in estimator.estimators_)
    assert info["features"] == list(FEATURES)
    assert set(info["feature_importances"]) == set(FEATURES)
    assert sum(info["feature_importances"].values()) == pytest.approx(1.0, abs=1e-4)
    assert info["metrics"] == {"roc_auc": 1.0}
    assert info["threshold"] == {
        "value": 50,
        "source": "default",
        "reason": "the model's manifest records no threshold",
    }
    assert info["champion"]["model-version"] == "test-3" and info["champion"]["threshold"] == info["threshold"]
    assert info["challenger"] is None
    # A model trained before bounds were calibrated keeps the old rule, and says so.
    assert {k: info["ood"][k] for k in ("rule", "z", "enabled")} == {"rule": "z", "z": 3.0, "enabled": True}
    assert "no calibrated bounds" in info["ood"]["note"]
    assert f"out-of-distribution flags: {info['ood']['note']}" in (local_stack.logs / "stack.log").read_text()
    assert info["sha256"] == sha256_file(paths.forest)
    assert info["estimator_sha256"] == sha256_file(paths.estimator)
    assert info["trained_at"] and info["sklearn_version"] and info["data_source"].startswith("test synthetic")


def test_model_info_needs_a_key(client: Client):
    assert_error(client.request("GET", "/v1/model-info", key=None), 403)


def test_openapi_document_is_valid_and_embeds_the_validator_schema(client: Client):
    reply = client.request("GET", "/openapi.json", key=None)
    assert reply.status == 200
    document = reply.json
    validate_openapi(document)
    assert document["openapi"].startswith("3.1")
    transaction = document["components"]["schemas"]["Transaction"]
    source = load_schema_document()
    assert transaction == {k: v for k, v in source.items() if k not in ("$schema", "$id")}
    v2 = {"/v2", "/v2/health/live", "/v2/health/ready"} | {
        f"/v2/models/{{name}}{version}{suffix}"
        for version in ("", "/versions/{version}")
        for suffix in ("", "/ready", "/infer")
    }
    assert (
        set(document["paths"])
        == {"/v1/fraud-score", "/v1/fraud-score/batch", "/v1/model-info", "/v1/drift", "/v1/drift/reset", "/health"}
        | v2
    )
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert {"200", "400", "403", "404", "413", "429", "503"} <= set(infer["responses"])
    v2_example = infer["requestBody"]["content"]["application/json"]["example"]
    jsonschema.validate(v2_example, document["components"]["schemas"]["V2InferenceRequest"])
    v2_reply = client.request("POST", "/v2/models/fraud/infer", json.dumps(v2_example))
    assert v2_reply.status == 200, v2_reply.raw
    score = document["paths"]["/v1/fraud-score"]["post"]
    assert {"200", "400", "403", "413", "415", "422", "429", "503"} <= set(score["responses"])
    assert document["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    example = score["requestBody"]["content"]["application/json"]["example"]
    jsonschema.validate(example, source)  # the example is a valid request
    assert client.score(example).status == 200


def test_docs_page_renders_in_headless_chromium(stack, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: run `make install`"
    url = f"{stack.base_url}/docs"
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
        "--window-size=1280,1400",
    ]
    paths = ("/v1/fraud-score", "/v1/fraud-score/batch", "/v1/model-info", "/health")
    for _attempt in range(3):  # on a loaded machine the 1.7 MB bundle may not have run in time
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        if "opblock-summary-path" in dom:
            break
    for path in paths:
        assert f'data-path="{path}"' in dom, f"{path} is not listed on /docs"
    assert "Fraud scoring" in dom
    assert "errors-wrapper" not in dom and "Warning" not in dom, "Swagger UI reported a problem with the document"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "docs.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    assert screenshot.stat().st_size > 10_000


def test_docs_assets_are_served_locally(client: Client):
    page = client.request("GET", "/docs", key=None)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    text = page.raw.decode()
    assert "http://" not in text and "https://" not in text  # no CDN
    bundle = client.request("GET", "/docs/static/swagger-ui-bundle.js", key=None)
    assert bundle.status == 200 and len(bundle.raw) > 1_000_000
