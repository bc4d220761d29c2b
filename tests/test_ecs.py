"""The ECS task definition (deploy/ecs/task-definition.json) runs the pair as docker-compose.yml
does: the same nginx environment, commands, health checks, users, read-only roots, no capabilities,
the socket volume shared, the API key from Secrets Manager. Its nginx image is nginx/Dockerfile
(the template baked in: Fargate cannot mount a file), on the compose file's pinned base."""

from __future__ import annotations

import json
import re

from stack.launcher import ROOT
from tests.container_files import compose, ecs_containers, instructions, interpolate

TASK = json.loads((ROOT / "deploy" / "ecs" / "task-definition.json").read_text())
CONTAINERS = ecs_containers()


def test_the_task_runs_what_the_compose_file_runs():
    services = compose()["services"]
    nginx, api = CONTAINERS["nginx"], CONTAINERS["api"]
    # The task has no exporters beside nginx: no datagrams to mtail, the run directory nginx's own.
    without_exporters = {"NGINX_MTAIL_LOG_LINE": "", "NGINX_RUN_DIR": "/tmp"}
    assert {e["name"]: e["value"] for e in nginx["environment"]} == {
        k: interpolate(v) for k, v in services["nginx"]["environment"].items()
    } | without_exporters
    assert nginx["command"] == services["nginx"]["command"]
    assert nginx["healthCheck"]["command"] == services["nginx"]["healthcheck"]["test"]
    assert api["healthCheck"]["command"] == services["api"]["healthcheck"]["test"]
    health = [a for k, a in instructions() if k == "HEALTHCHECK"][-1]
    assert health.endswith(f"CMD {json.dumps(api['healthCheck']['command'][1:])}")
    assert nginx["dependsOn"] == [{"containerName": "api", "condition": "HEALTHY"}]
    assert api["stopTimeout"] == int(services["api"]["stop_grace_period"].removesuffix("s"))


def test_the_task_is_hardened_and_shares_the_socket():
    for name, container in CONTAINERS.items():
        assert container["readonlyRootFilesystem"] is True, name
        assert container["linuxParameters"]["capabilities"]["drop"] == ["ALL"], name
        assert not container["user"].startswith("0"), name
        paths = {m["containerPath"]: m["sourceVolume"] for m in container["mountPoints"]}
        assert paths["/run/fraud-scoring"] == "sockets" and "/tmp" in paths, name
    assert {e["name"] for e in CONTAINERS["api"]["secrets"]} == {"API_KEY"}
    assert "API_KEY" not in {e["name"] for c in CONTAINERS.values() for e in c.get("environment", [])}


def test_the_nginx_image_bakes_the_template_on_the_compose_files_base():
    dockerfile = (ROOT / "nginx" / "Dockerfile").read_text()
    pinned = re.search(r"^ARG NGINX_IMAGE=(\S+)", dockerfile, re.M).group(1)
    assert pinned == interpolate(compose()["services"]["nginx"]["image"])
    assert "COPY nginx.conf.template /etc/nginx/templates/nginx.conf.template" in dockerfile
    assert ":/etc/nginx/templates/nginx.conf.template:ro" in " ".join(compose()["services"]["nginx"]["volumes"])
