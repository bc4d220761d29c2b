"""nginx's queue and body limits follow WORKERS, QUEUE_PER_WORKER and BATCH_MAX by one rule
(service/core/settings.py: Settings.scoring_queue, Settings.batch_body_kb), in every deployment.
The launcher renders them natively; the nginx containers of compose, Kubernetes and ECS derive them
at start with nginx/limits.sh, which must agree with the launcher for any values, and each
deployment must hand its nginx the values its api runs with, whatever they are set to."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from service.core.settings import from_mapping
from stack.launcher import ROOT, nginx_values
from tests.container_files import (
    BASE,
    HOOK_PATH,
    LIMITS_HOOK,
    by_kind,
    compose,
    containers,
    documents,
    interpolate,
    nginx_environment,
    render,
)

SETTINGS = ("WORKERS", "QUEUE_PER_WORKER", "BATCH_MAX")
DERIVED = ("SCORING_QUEUE", "BATCH_MAX_BODY_SIZE", "CLIENT_MAX_BODY_SIZE")
NON_DEFAULT = {"WORKERS": "4", "QUEUE_PER_WORKER": "64", "BATCH_MAX": "5000"}


def launcher_limits(environment: dict[str, str]) -> dict[str, str]:
    """What `make run` renders into nginx's config for an api started with this environment."""
    settings = from_mapping({"API_KEY": "k" * 16, **{k: environment[k] for k in SETTINGS}})
    rendered = nginx_values(settings, Path("/tmp"), Path("/run/fraud-scoring/gunicorn.sock"))
    return {name: rendered[name] for name in DERIVED}


def derived(environment: dict[str, str]) -> dict[str, str]:
    return {name: environment[name] for name in DERIVED}


@pytest.mark.parametrize(
    "workers, queue, batch",
    [(1, 1, 1), (2, 128, 1000), (4, 64, 5000), (3, 7, 999), (5, 3, 3), (7, 1024, 9999), (64, 1024, 10_000)],
)
def test_the_hook_applies_the_launchers_rule(workers, queue, batch):
    values = {"WORKERS": str(workers), "QUEUE_PER_WORKER": str(queue), "BATCH_MAX": str(batch)}
    assert derived(nginx_environment(values)) == launcher_limits(values)


@pytest.mark.parametrize("missing", SETTINGS)
def test_the_hook_stops_the_container_naming_a_missing_setting(missing):
    env = {"PATH": os.environ["PATH"], **{k: v for k, v in NON_DEFAULT.items() if k != missing}}
    done = subprocess.run(["sh", "-c", '. "$0"', str(LIMITS_HOOK)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and missing in done.stderr


def sources_the_hook(command: list[str]) -> bool:
    """Whether a container's command sources limits.sh before the image's entrypoint renders."""
    return command[:2] == ["sh", "-c"] and command[2].startswith(f". {HOOK_PATH} && exec /docker-entrypoint.sh nginx ")


@pytest.mark.parametrize("shell_env", [{}, NON_DEFAULT], ids=["defaults", "non-default"])
def test_compose_gives_nginx_the_limits_of_the_apis_settings(shell_env):
    services = compose()["services"]
    api = {k: interpolate(v, shell_env) for k, v in services["api"]["environment"].items()}
    nginx = nginx_environment({k: interpolate(v, shell_env) for k, v in services["nginx"]["environment"].items()})
    if shell_env:
        assert {k: api[k] for k in SETTINGS} == shell_env
    assert derived(nginx) == launcher_limits(api)
    assert f"./nginx/limits.sh:{HOOK_PATH}:ro" in services["nginx"]["volumes"]
    assert sources_the_hook(services["nginx"]["command"])


def environment(container: dict, configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    """A pod container's plain environment: its ConfigMaps' keys, then its own values."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


@pytest.mark.parametrize("settings", [{}, NON_DEFAULT], ids=["base", "overlay"])
def test_kubernetes_gives_nginx_the_limits_of_the_apis_settings(tmp_path, settings):
    """The base as it is, and an overlay that sets the settings, as an environment's would."""
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, tmp_path)],
        "configMapGenerator": [
            {
                "name": "fraud-scoring-settings",
                "behavior": "merge",
                "literals": [f"{k}={v}" for k, v in settings.items()],
            }
        ],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    docs = documents(render(tmp_path) if settings else None)
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    pod = containers(docs)
    api = environment(pod["api"], configmaps)
    nginx = nginx_environment(environment(pod["nginx"], configmaps))
    if settings:
        assert {k: api[k] for k in SETTINGS} == settings
    assert derived(nginx) == launcher_limits(api)
    # limits.sh is the repository's, in the template's ConfigMap, mounted beside the template.
    (mount,) = [m for m in pod["nginx"]["volumeMounts"] if HOOK_PATH.startswith(m["mountPath"] + "/")]
    volumes = {v["name"]: v for v in by_kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert configmaps[volumes[mount["name"]]["configMap"]["name"]]["limits.sh"] == LIMITS_HOOK.read_text()
    assert sources_the_hook(pod["nginx"]["args"])


def test_ecs_gives_nginx_the_limits_of_the_apis_settings():
    """Both containers carry the settings (a task definition has no shared environment): the same
    values in each, and nginx's limits derived from them are the launcher's for the api's."""
    task = json.loads((ROOT / "deploy" / "ecs" / "task-definition.json").read_text())
    env = {c["name"]: {e["name"]: e["value"] for e in c.get("environment", [])} for c in task["containerDefinitions"]}
    assert {k: env["nginx"][k] for k in SETTINGS} == {k: env["api"][k] for k in SETTINGS}
    assert derived(nginx_environment(env["nginx"])) == launcher_limits(env["api"])
    for name, value in NON_DEFAULT.items():  # an operator's edit, made to both containers
        env["api"][name] = env["nginx"][name] = value
    assert derived(nginx_environment(env["nginx"])) == launcher_limits(env["api"])
    assert f"COPY limits.sh {HOOK_PATH}" in (ROOT / "nginx" / "Dockerfile").read_text()
    (nginx,) = [c for c in task["containerDefinitions"] if c["name"] == "nginx"]
    assert sources_the_hook(nginx["command"])


def test_a_full_batch_of_the_largest_ordinary_transactions_fits_the_batch_body_limit():
    """BATCH_MAX transactions pretty-printed (two-space indent), every number at full precision and the longest ASCII
    transaction_id the contract allows, inside {"transactions": [...]}: under nginx's limit, so a
    valid batch is never a 413."""
    from service.contract.schema import id_document
    from service.core.features import FEATURES

    settings = from_mapping({"MODEL_PATH": "unused", "BATCH_MAX": "1000"}, require_api_key=False)
    largest = {name: -1.2345678901234567e-105 for name in FEATURES}
    largest["transaction_id"] = "x" * id_document()["maxLength"]
    body = json.dumps({"transactions": [largest] * settings.batch_max}, indent=2).encode()
    assert len(body) <= settings.batch_body_kb * 1024
