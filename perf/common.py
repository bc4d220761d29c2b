"""What `make perf` and its parts run alike: the stack they load, the rows they send, their log line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import orjson

from model import synthetic
from perf.placement import EVERYWHERE, Placement, Watch
from service.core.features import FEATURES
from stack import harness
from stack.launcher import Stack


def log(message: str) -> None:
    print(f"[perf {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sample_rows(seed: int = 2026) -> np.ndarray:
    """Transactions the model has not seen, genuine and fraudulent, in the data set's proportions."""
    X, _ = synthetic.generate(20_000, seed=seed)
    return X


def as_bodies(X: np.ndarray) -> list[bytes]:
    return [orjson.dumps(dict(zip(FEATURES, map(float, row), strict=True))) for row in X]


BARE_APP = "perf.bare:application"
FALCON_APP = "perf.bare:falcon_application"


def watched(stack: Stack, watch: Watch) -> Stack:
    """The stack, its servers watched as the service's and its compactor, a sidecar on the load's
    cores, with the load (perf/placement.py)."""
    watch.service(stack.gunicorn.pid if stack.gunicorn else None, stack.nginx.pid if stack.nginx else None)
    if stack.compactor:
        watch.load(stack.compactor.pid)
    return stack


def start_stack(
    model_path: Path,
    api_key: str,
    stack_log: Path,
    workers: int | None = None,
    app: str | None = None,
    placement: Placement = EVERYWHERE,
    **extra: str,
) -> Stack:
    """The real nginx + gunicorn, as `make run` starts them, on a free loopback port, limits lifted.
    WORKERS and GUNICORN_CMD_ARGS pass through, to compare settings; a developer's .env does not.
    nginx's access-log lines are formatted and written as in production, to /dev/null rather than
    filling the disk; errors go to the stack log. `app` replaces the service's WSGI callable (the bare
    stack). In the split placement every server of the stack runs on the service's cores (the
    compactor, a sidecar, on the load's), and WORKERS, unless set, is their number."""
    env = harness.environment(api_key, model_path, ("WORKERS", "GUNICORN_CMD_ARGS"), **{**harness.UNLIMITED, **extra})
    if workers:
        env["WORKERS"] = str(workers)
    elif placement.service and "WORKERS" not in env:
        env["WORKERS"] = str(len(placement.service))  # as the service counts them under taskset
    return harness.start(
        env,
        log=stack_log,
        access_log="/dev/null",
        stdout_to_log=False,
        app=app,
        confine=placement.service_prefix(),
        sidecar_confine=placement.sidecar_prefix(),
    )
