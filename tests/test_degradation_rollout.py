"""Graceful degradation without a model, and zero-downtime model rollout, on the real stack."""

from __future__ import annotations

import os

import pytest

from service.core.artifacts import ArtifactPaths
from tests.helpers import (
    UNLIMITED,
    Client,
    SteadyTraffic,
    assert_error,
    install_model,
    log_text,
    sample_transaction,
    samples,
    start_stack,
    two_trained_models,
    value,
    wait_for,
)


def test_without_a_model_the_service_starts_and_answers_503(tmp_path, small_model):
    model_path = tmp_path / "models" / "fraud-model.joblib"
    model_path.parent.mkdir()
    stack = start_stack(model_path, tmp_path / "logs")
    try:
        client = Client("127.0.0.1", stack.settings.port)
        health = client.request("GET", "/health", key=None)
        assert health.status == 503
        assert health.json["status"] == "unhealthy" and health.json["model_loaded"] is False
        assert "make model" in health.json["reason"]
        for reply in (
            client.score(sample_transaction()),
            client.request("POST", "/v1/fraud-score/batch", {"transactions": [sample_transaction()]}),
            client.request("GET", "/v1/model-info"),
        ):
            body = assert_error(reply, 503)
            assert body["error"] == "model_unavailable"
            assert int(reply.headers["Retry-After"]) > 0
        assert client.request("GET", "/openapi.json", key=None).status == 200
        # V2: alive, not ready; the model's routes answer 503 in the protocol's error shape.
        assert client.request("GET", "/v2/health/live", key=None).status == 200
        assert client.request("GET", "/v2", key=None).status == 200
        for method, path in (
            ("GET", "/v2/health/ready"),
            ("GET", "/v2/models/fraud"),
            ("GET", "/v2/models/fraud/ready"),
            ("POST", "/v2/models/fraud/infer"),
        ):
            reply = client.request(method, path, {} if method == "POST" else None)
            assert reply.status == 503 and int(reply.headers["Retry-After"]) > 0
            assert reply.json == {"error": health.json["reason"].join(["no model is loaded: ", ""])}

        # The operator provides a model and asks for a rollout: the service recovers without a restart.
        install_model(small_model[0], model_path)
        stack.reload()
        wait_for(lambda: client.request("GET", "/health", key=None).status == 200)
        # On a busy machine the first requests after the rollout may wait out their deadline while the
        # new workers start (the designed 503): poll until one is served.
        scored = wait_for(lambda: (reply := client.score(sample_transaction())).status == 200 and reply)
        assert scored.json["model-version"] == "test-3"
        wait_for(lambda: client.request("GET", "/v2/models/fraud/versions/test-3/ready", key=None).status == 200)
    finally:
        stack.stop()


def test_wrong_digest_starts_degraded_with_the_reason(tmp_path, small_model):
    model_path = tmp_path / "fraud-model.joblib"
    install_model(small_model[0], model_path)
    forest = ArtifactPaths.for_model(model_path).forest
    forest.write_bytes(forest.read_bytes() + b"tampered")
    stack = start_stack(model_path, tmp_path / "logs")
    try:
        health = Client("127.0.0.1", stack.settings.port).request("GET", "/health", key=None)
        assert health.status == 503 and "does not match" in health.json["reason"]
        assert "refusing to load" in log_text(tmp_path / "logs")
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    return two_trained_models(tmp_path_factory.mktemp("two-models"))


def test_rollout_under_steady_traffic_switches_cleanly(tmp_path, two_models):
    a, b, probe, expected = two_models
    model_path = tmp_path / "fraud-model.joblib"
    install_model(a, model_path)
    stack = start_stack(model_path, tmp_path / "logs", **UNLIMITED)
    traffic = [SteadyTraffic(Client("127.0.0.1", stack.settings.port), probe) for _ in range(3)]
    try:
        for t in traffic:
            t.start()
        wait_for(lambda: all(len(t.seen) > 20 for t in traffic))
        install_model(b, model_path)
        stack.reload()
        wait_for(lambda: all(t.seen[-30:] and all(v == "test-4" for _, v, _ in t.seen[-30:]) for t in traffic))
        seen = [s for t in traffic for s in t.stop()]
        scraped = samples(Client("127.0.0.1", stack.settings.port))
    finally:
        for t in traffic:
            t.stopping.set()
        stack.stop()
    # Metrics survive the rollout (the multiprocess files are not wiped) and name the new model.
    assert value(scraped, "fraud_model_info", version="test-4") == 1
    assert value(scraped, "fraud_model_info", version="test-3") == 0
    scored = value(scraped, "fraud_scored_total", is_fraud="true") + value(
        scraped, "fraud_scored_total", is_fraud="false"
    )
    assert scored >= len(seen)
    failures = [s for s in seen if s[0] != 200]
    assert not failures, f"{len(failures)} of {len(seen)} requests failed during the rollout: {failures[:3]}"
    # Every response comes wholly from one model: its version and its score agree.
    assert all(score == expected[version] for _, version, score in seen)
    for t in traffic:
        versions = [v for _, v, _ in t.seen]
        assert versions[0] == "test-3" and versions[-1] == "test-4"
        last_a = max(i for i, v in enumerate(versions) if v == "test-3")
        assert all(v == "test-4" for v in versions[last_a + 1 :])
    assert "rolled out model test-4" in log_text(tmp_path / "logs")


def test_rollout_to_a_model_that_fails_verification_keeps_the_old_one(tmp_path, two_models):
    a, b, probe, expected = two_models
    model_path = tmp_path / "fraud-model.joblib"
    install_model(a, model_path)
    stack = start_stack(model_path, tmp_path / "logs", **UNLIMITED)
    client = Client("127.0.0.1", stack.settings.port)
    traffic = SteadyTraffic(client, probe)
    try:
        traffic.start()
        install_model(b, model_path)
        forest = ArtifactPaths.for_model(model_path).forest
        tampered = forest.with_name(".tampered")
        tampered.write_bytes(forest.read_bytes()[:-8] + b"\0" * 8)
        os.replace(tampered, forest)
        stack.reload()
        wait_for(lambda: "rollout refused" in log_text(tmp_path / "logs"))
        served_before = len(traffic.seen)
        wait_for(lambda: len(traffic.seen) > served_before + 100)  # the recycled workers keep serving
        seen = traffic.stop()
    finally:
        traffic.stopping.set()
        stack.stop()
    assert seen and all(s == (200, "test-3", expected["test-3"]) for s in seen)
    assert "does not match" in log_text(tmp_path / "logs")
