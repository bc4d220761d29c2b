"""The directory where prometheus-client's multiprocess mode keeps each process's samples.

prometheus_client decides at import time whether it runs in multiprocess mode, from
PROMETHEUS_MULTIPROC_DIR: so this module must not import it, and gunicorn.conf.py calls `prepare`
in the master before anything (the preloaded app included) imports service.telemetry.metrics."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from functools import cache

ENV = "PROMETHEUS_MULTIPROC_DIR"


@cache
def prepare() -> tuple[str, bool]:
    """The directory exists and holds no samples from an earlier run (stale files would add old
    counts to new ones). Returns (path, whether it was made here and so is ours to remove).
    Once per process: gunicorn re-reads its config on a rollout (SIGHUP), and wiping the files of
    the running workers then would lose their counts."""
    path = os.environ.get(ENV)
    created = not path
    if not path:
        path = tempfile.mkdtemp(prefix="fraud-scoring-metrics-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.environ[ENV] = path
    os.makedirs(path, exist_ok=True)
    # prometheus_client's *.db files, and service.engine.drift's counts and baselines.
    for stale in glob.glob(os.path.join(path, "*.db")) + glob.glob(os.path.join(path, "drift_*")):
        os.remove(stale)
    return path, created


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
