"""The Kubernetes base, rendered by kustomize and checked against the API schema of a named
Kubernetes version; it agrees with docker-compose.yml and the Dockerfile where they say the same
thing. `make container-test` runs the rendered pod with `podman kube play`."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest

from stack.launcher import TEMPLATE
from tests.container_files import (
    KUBERNETES_VERSION,
    LIMITS_HOOK,
    by_kind,
    compose,
    containers,
    documents,
    instructions,
    interpolate,
)


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return documents()


def schema_errors(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{doc['kind']}: {e.message}"]
    return []


def test_every_document_follows_the_kubernetes_api_schema(docs):
    assert {d["kind"] for d in docs} == {
        "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    }  # fmt: skip
    assert [e for d in docs for e in schema_errors(d)] == []


def test_the_schema_check_rejects_a_broken_deployment(docs):
    broken = copy.deepcopy(by_kind(docs, "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    assert schema_errors(broken)
    broken = copy.deepcopy(by_kind(docs, "Deployment"))
    broken["spec"]["replicas"] = "two"
    assert schema_errors(broken)


def test_the_nginx_configmap_is_generated_from_the_template(docs):
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and "nginx.conf.template" in d["data"]]
    assert configmap["data"] == {"nginx.conf.template": TEMPLATE.read_text(), "limits.sh": LIMITS_HOOK.read_text()}
    volumes = {v["name"]: v for v in by_kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    # kustomize names it by its content, so a changed template rolls the pods.
    assert volumes["nginx-template"]["configMap"]["name"] == configmap["metadata"]["name"] != "fraud-scoring-nginx"


def test_the_pod_runs_what_the_compose_file_runs(docs):
    pod = containers(docs)
    services = compose()["services"]
    settings = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    shared = {k: v for source in pod["nginx"]["envFrom"] for k, v in settings[source["configMapRef"]["name"]].items()}
    nginx_env = {**shared, **{e["name"]: e["value"] for e in pod["nginx"]["env"]}}
    assert nginx_env == {k: interpolate(v) for k, v in services["nginx"]["environment"].items()}
    assert pod["api"]["envFrom"] == pod["nginx"]["envFrom"]  # the settings the limits follow: the api's
    # compose's command replaces the image's CMD; in Kubernetes that is args (command would replace
    # the entrypoint that renders the template).
    assert pod["nginx"]["args"] == services["nginx"]["command"] and "command" not in pod["nginx"]
    assert pod["nginx"]["image"] == interpolate(services["nginx"]["image"])
    assert ["CMD", *pod["api"]["livenessProbe"]["exec"]["command"]] == services["api"]["healthcheck"]["test"]
    assert pod["api"]["startupProbe"]["exec"] == pod["api"]["livenessProbe"]["exec"]
    health = [a for k, a in instructions() if k == "HEALTHCHECK"][-1]
    assert health.endswith(f"CMD {json.dumps(pod['api']['livenessProbe']['exec']['command'])}")
    mounts = {c: {m["mountPath"] for m in pod[c]["volumeMounts"]} for c in pod}
    assert "/run/fraud-scoring" in mounts["api"] & mounts["nginx"]
    assert "/etc/nginx/templates" in mounts["nginx"]
    log = {e["name"]: e["value"] for e in pod["api"]["env"] if "value" in e}["PREDICTION_LOG_DIR"]
    assert log == services["api"]["environment"]["PREDICTION_LOG_DIR"] and log in mounts["api"] & mounts["compactor"]
    assert pod["compactor"]["command"] == services["compactor"]["command"]
    for exporter in ("nginx-log-exporter", "nginx-exporter"):  # beside nginx, on its run directory
        assert pod[exporter]["command"] == services[exporter]["command"], exporter
        assert nginx_env["NGINX_RUN_DIR"] in mounts[exporter] & mounts["nginx"]
        (port,) = pod[exporter]["ports"]
        assert pod[exporter]["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": port["name"]}
        assert services[exporter]["ports"][0].endswith(f":{port['containerPort']}")


def test_containers_are_non_root_read_only_without_capabilities_and_limited(docs):
    spec = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in spec["containers"]:
        security = container["securityContext"]
        assert security["runAsUser"] > 0 and security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # In memory, but for the prediction log, which is data kept on disk
    assert all(
        v["emptyDir"]["medium"] == "Memory"
        for v in spec["volumes"]
        if "emptyDir" in v and v["name"] != "prediction-log"
    )


def test_the_api_key_comes_from_a_secret(docs):
    api_env = {e["name"]: e for e in containers(docs)["api"]["env"]}
    assert api_env["API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "fraud-scoring-api-key", "key": "API_KEY"}
    assert "Secret" not in {d["kind"] for d in docs}  # created by the operator, never in the repository


def test_autoscaler_and_disruption_budget_target_the_deployment(docs):
    deployment = by_kind(docs, "Deployment")
    hpa, pdb = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "PodDisruptionBudget")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert by_kind(docs, "Service")["spec"]["selector"].items() <= labels.items()
