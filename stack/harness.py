"""Throwaway stacks for the tests, `make perf` and `make chaos`: one way to start them.

A stack here is the real thing, `stack.launcher.Stack` (nginx + gunicorn, as `make run` starts them),
on a free loopback port, in an environment of its own: the caller's `.env` is never read and only a
few process variables (PATH, HOME, locale, TMPDIR) pass through, plus whatever the caller names. Another process may take a free port between the probe and nginx's bind: `start` retries.

Why in `service/`: tests/, perf/ and chaos/ each need it, and each imports `service/` but not one
another (perf and chaos must run without pytest or the test suite). `stack/launcher.py` stays the
launcher of one stack; this module is what a harness needs around it, and nothing on the serving
path imports it.

An external service instead of a local stack (containers, a staging host):

    FRAUD_BASE_URL=http://127.0.0.1:8080 FRAUD_API_KEY=key-one,key-two .venv/bin/python -m pytest tests/

`FRAUD_API_KEY` is the service's `API_KEY` value: two keys, comma-separated (the tests check that a
rotated key is accepted, so the second is required). The service must run with the default settings
except `API_KEY` (rate limits, `BATCH_MAX`, `FRAUD_THRESHOLD`…) and any model. The HTTP tests that
only need a service answering run against it; the tests that start their own stacks, choose the model,
or read the stack's logs skip, saying why (`EXTERNAL_SKIP_REASON`)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from service.core.settings import from_mapping
from stack.launcher import Stack, http_get

# One key from one address at full speed (a load test) would hit nginx's per-key and per-address
# limits: these lift them as far as settings allow.
UNLIMITED = {"RATE_LIMIT_PER_KEY": "100000000", "RATE_LIMIT_PER_IP": "1000000", "RATE_LIMIT_BURST": "1000000"}
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
NO_ENV_FILE = "/nonexistent/.env"  # a developer's .env must not leak into a harness's stack
BASE_URL_ENV, API_KEY_ENV = "FRAUD_BASE_URL", "FRAUD_API_KEY"
EXTERNAL_SKIP_REASON = f"starts its own stack, model or settings, or reads its logs: not with {BASE_URL_ENV}"


def free_port() -> int:
    """A loopback port free at the time of asking (see `start` for the race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(api_key: str, model_path: Path, pass_through: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """A stack's environment: this key and model, no `.env`, only named process variables kept."""
    env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH + pass_through}
    env.update({"API_KEY": api_key, "MODEL_PATH": str(model_path), "HOST": "127.0.0.1", "ENV_FILE": NO_ENV_FILE})
    env.update(extra)
    return env


def start(
    env: Mapping[str, str],
    log: Path | None = None,
    access_log: str = "/dev/null",
    stdout_to_log: bool = True,
    attempts: int = 3,
    timeout: float = 60.0,
    app: str | None = None,
    wrapper: tuple[str, ...] = (),
    confine: tuple[str, ...] = (),
    sidecar_confine: tuple[str, ...] | None = None,
) -> Stack:
    """Starts a Stack with `env` on a free loopback port and waits until it answers /health.

    `log` receives nginx's and gunicorn's stderr (and stdout, where gunicorn's access lines go, unless
    `stdout_to_log` is false); without it both are discarded. The last failure's log tail is raised.
    `wrapper` is a command gunicorn runs inside, `confine` one every server runs inside, and
    `sidecar_confine`, when given, the compactor's instead (see Stack)."""
    for attempt in range(attempts):
        full = {**env, "PORT": str(free_port())}
        out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115  (the children keep it open)
        stdout = out if stdout_to_log else subprocess.DEVNULL
        try:
            stack = Stack(
                from_mapping(full),
                env=full,
                stdout=stdout,
                stderr=out,
                access_log=access_log,
                app=app,
                wrapper=wrapper,
                confine=confine,
                sidecar_confine=sidecar_confine,
            )
            return stack.start(timeout)
        except RuntimeError as e:
            if attempt == attempts - 1:
                tail = log.read_text()[-3000:] if log and log.exists() else ""
                raise RuntimeError(f"{e}\n{tail}".rstrip()) from None
        finally:
            if log:
                out.close()
    raise AssertionError("unreachable")


def wait_for_health(host: str, port: int, timeout: float = 60.0) -> None:
    """Until /health answers 200 (an external service, a launcher started as a process)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http_get(host, port, "/health")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"http://{host}:{port}/health did not answer 200 within {timeout:.0f} s")
        time.sleep(0.05)


@dataclass(frozen=True)
class External:
    """A service already running somewhere, named by FRAUD_BASE_URL and FRAUD_API_KEY."""

    base_url: str
    keys: tuple[str, ...]

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.base_url).port or 80


def external(environ: Mapping[str, str] | None = None) -> External | None:
    """The external service the environment names, or None to start local stacks."""
    environ = os.environ if environ is None else environ
    url = environ.get(BASE_URL_ENV, "").strip().rstrip("/")
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path:
        raise ValueError(f"{BASE_URL_ENV} must be http://HOST[:PORT], got {url!r}")
    keys = tuple(k.strip() for k in environ.get(API_KEY_ENV, "").split(",") if k.strip())
    if len(keys) < 2:
        raise ValueError(f"{API_KEY_ENV} must name two of the service's API keys, comma-separated")
    return External(url, keys)
