"""The container files, checked without a Docker engine: hadolint, the Compose specification's
JSON Schema, nginx -t on the config the nginx container renders, and the Dockerfile running only
commands that this suite exercises natively."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema

from service.core.settings import from_mapping
from service.runtime import healthcheck, serve
from stack.launcher import PLACEHOLDER, ROOT, TEMPLATE, find_nginx, nginx_values, render_nginx_config
from tests.container_files import DOCKERFILE, compose, instructions, interpolate, nginx_environment

COMPOSE_SCHEMA = ROOT / "deploy" / "compose-spec" / "compose-spec.json"


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install flask\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout  # :latest


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_compose_file_follows_the_compose_specification():
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(compose())]
    assert errors == []


def test_the_schema_rejects_a_broken_compose_file():
    broken = compose()
    broken["services"]["api"]["read_only"] = "sometimes"
    broken["services"]["nginx"]["healthcheck"]["intervall"] = "10s"
    assert len(list(validator().iter_errors(broken))) == 2


def test_compose_hardening():
    services = compose()["services"]
    assert set(services) == {"api", "nginx", "compactor", "nginx-log-exporter", "nginx-exporter"}
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        assert service["healthcheck"]["test"], name
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "sockets:/run/fraud-scoring" in services["api"]["volumes"]
    assert "sockets:/run/fraud-scoring" in services["nginx"]["volumes"]
    for exporter in ("nginx-log-exporter", "nginx-exporter"):  # beside nginx, on its run directory
        assert (
            "nginx-run:/run/nginx" in services[exporter]["volumes"]
            and "nginx-run:/run/nginx" in services["nginx"]["volumes"]
        )
    log = f"prediction-log:{services['api']['environment']['PREDICTION_LOG_DIR']}"
    assert log in services["api"]["volumes"] and log in services["compactor"]["volumes"]


def test_the_nginx_container_renders_a_config_that_nginx_accepts(tmp_path):
    nginx = compose()["services"]["nginx"]
    values = nginx_environment({k: interpolate(v) for k, v in nginx["environment"].items()})
    assert "./nginx/nginx.conf.template:/etc/nginx/templates/nginx.conf.template:ro" in nginx["volumes"]
    rendered = render_nginx_config(TEMPLATE.read_text(), values)  # every placeholder has a value
    assert f"-c {values['NGINX_ENVSUBST_OUTPUT_DIR']}/nginx.conf " in nginx["command"][-1]
    # Only the run directory moves, so that nginx -t may create its temp paths here.
    conf = tmp_path / "nginx.conf"
    conf.write_text(rendered.replace(values["NGINX_RUN_DIR"], str(tmp_path)))
    result = subprocess.run(
        [find_nginx(), "-t", "-q", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_compose_gives_nginx_what_the_launcher_renders():
    """The nginx container's values, once its entrypoint has derived the limits, are what
    stack/launcher.py renders for the same settings (the defaults, the container's listen address
    and paths), so the two cannot drift apart; and each provides every placeholder of the template,
    no more (the container also has the settings the limits are derived from)."""
    placeholders = set(PLACEHOLDER.findall(TEMPLATE.read_text()))
    settings = from_mapping({"API_KEY": "k" * 16, "HOST": "0.0.0.0", "PORT": "8080"})
    run_dir = Path("/run/nginx")  # shared with the exporters: their sockets are there
    launcher = nginx_values(
        settings, run_dir, Path("/run/fraud-scoring/gunicorn.sock"), "/dev/stdout", run_dir / "access-log.sock"
    )
    environment = compose()["services"]["nginx"]["environment"]
    container = nginx_environment({k: interpolate(v) for k, v in environment.items()})
    settings_given = {"NGINX_ENVSUBST_OUTPUT_DIR", "WORKERS", "QUEUE_PER_WORKER", "BATCH_MAX"}
    container = {k: v for k, v in container.items() if k not in settings_given}
    assert set(launcher) == placeholders
    assert set(container) == placeholders
    # The nginx image runs unprivileged: no `user` line, as the launcher renders when not root.
    assert container.pop("NGINX_USER_LINE") == ""
    launcher.pop("NGINX_USER_LINE")
    assert container == launcher
    # The socket nginx proxies to is the one gunicorn binds in the api container.
    env = " ".join(argument for kind, argument in instructions() if kind == "ENV")
    assert launcher["GUNICORN_UPSTREAM"] == re.search(r"GUNICORN_BIND=(\S+)", env).group(1)


def test_the_dockerfile_runs_only_what_the_suite_runs_natively():
    steps = instructions()
    makefile = (ROOT / "Makefile").read_text()
    for kind, argument in steps:
        if kind != "RUN":
            continue
        for command in (c.strip() for c in argument.split("&&")):
            words = shlex.split(command)
            if words[0] == "make":
                target = next(w for w in words[1:] if "=" not in w)
                assert re.search(rf"^{target}:", makefile, re.M), command
            else:  # image plumbing, not the service's own steps
                assert words[0] in {"apt-get", "rm", "groupadd", "useradd", "install", "touch"}, command
    run = [json.loads(a) for k, a in steps if k == "CMD"]
    assert run[-1] == ["python", "-m", "service.runtime.serve"]  # what stack/launcher.py starts for every test
    assert '[sys.executable, "-m", "service.runtime.serve"]' in (ROOT / "stack" / "launcher.py").read_text()
    health = [a for k, a in steps if k == "HEALTHCHECK"]
    assert health and health[-1].endswith('CMD ["python", "-m", "service.runtime.healthcheck"]')
    assert compose()["services"]["api"]["healthcheck"]["test"] == ["CMD", "python", "-m", "service.runtime.healthcheck"]
    assert any(k == "USER" and not a.startswith(("0", "root")) for k, a in steps)
    assert serve.argv()[-1] == "service.runtime.wsgi:application"


def test_the_container_healthcheck_against_a_real_gunicorn(local_stack, tmp_path):
    env = {"GUNICORN_BIND": f"unix:{local_stack.socket}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "service.runtime.healthcheck"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"status":"healthy"' in result.stdout
    healthy, line = healthcheck.check(f"unix:{tmp_path}/nothing.sock")
    assert not healthy and "unhealthy" in line


def test_the_datagram_access_log_is_the_access_log_line_by_line():
    """nginx sends mtail the access log's own lines (json), as newline-terminated datagrams
    (json_datagram): the two formats differ by the newline only."""
    text = TEMPLATE.read_text()
    formats = dict(re.findall(r"log_format (\w+) escape=json\n((?:\s+'[^\n]*\n)+)", text))
    assert formats["json_datagram"].replace(" '\\n';", ";") == formats["json"], formats
