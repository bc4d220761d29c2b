"""gunicorn settings. Read in the master; the service's own settings come from service.core.settings."""

import os
import sys

from service.core import settings as service_settings
from service.telemetry import multiproc

_settings = service_settings.load_or_exit()
# Before the preloaded app imports prometheus_client: multiprocess mode, no samples from a past run.
_metrics_dir, _metrics_dir_is_ours = multiproc.prepare()

# nginx reaches the workers over a unix socket; the launcher (stack/launcher.py) or the container
# sets its path.
bind = [os.environ.get("GUNICORN_BIND", "unix:/run/fraud-scoring/gunicorn.sock")]
workers = _settings.workers
# The socket's queue of connections no worker has accepted yet. nginx admits at most
# `scoring_queue` API requests at once (limit_conn; beyond it, an immediate 503), so they always fit
# here; the rest is room for the routes nginx does not count (/health, /metrics), so that a probe
# waits behind a full scoring queue instead of being refused while scoring sheds (docs/operations.md).
backlog = _settings.scoring_queue + 1024
# Sync (scoring is CPU-bound and nginx absorbs slow clients), freed as soon as its answer is written.
worker_class = "service.runtime.worker.Worker"
preload_app = True  # settings, model and schema load once in the master and are shared after fork
worker_tmp_dir = "/dev/shm"  # the heartbeat file must not sit on a slow or read-only disk
# A recycled worker leaves a gap and starts cold, which shows in the tail latency when workers
# recycle every few seconds under load (perf/README.md). A million still bounds a slow leak, at
# minutes rather than seconds between restarts under load.
max_requests = 1_000_000
max_requests_jitter = 100_000  # workers recycle at different times, never all at once
timeout = 30
graceful_timeout = 20

pidfile = os.environ.get("GUNICORN_PIDFILE")  # `make reload` signals the master found here
control_socket_disable = True  # signals are the control interface (make reload)

logger_class = "service.telemetry.logs.JsonGunicornLogger"
# One access log, nginx's: it also records the app's time and the worker's pid (from response
# headers it hides from clients), so a second line per request here would only cost CPU.
accesslog = None
errorlog = "-"
loglevel = "info"
proc_name = "fraud-scoring"


def on_reload(server):
    """SIGHUP (`make reload`): roll out the model now at MODEL_PATH with zero downtime. gunicorn
    calls this in the master before it forks the new workers and then retires the old ones."""
    from service.runtime import wsgi

    wsgi.roll_out(server)


def _spool():
    """The prediction log's spool of the preloaded service app (none for another app, or with the log off)."""
    return getattr(sys.modules.get("service.runtime.wsgi"), "spool", None)


def _tracing():
    """The OpenTelemetry export of the preloaded service app (none for another app, or with it off)."""
    return getattr(sys.modules.get("service.runtime.wsgi"), "tracing", None)


def post_fork(server, worker):
    """In each new worker: its own prediction-log segment and span exporter (queue and thread),
    made here and never in the master."""
    spool = _spool()
    if spool is not None:
        spool.open()
    tracing = _tracing()
    if tracing is not None:
        tracing.start()


def worker_exit(server, worker):
    """In a worker that stops (SIGTERM, rollout, max_requests): its segment sealed for the compactor,
    its last spans sent (within a bounded time)."""
    spool = _spool()
    if spool is not None:
        spool.seal()
    tracing = _tracing()
    if tracing is not None:
        tracing.stop()


def child_exit(server, worker):
    """In the master, for every worker that exits (killed, crashed or recycled by max_requests)."""
    from service.telemetry import metrics

    metrics.worker_exited(worker.pid)


def on_exit(server):
    if _metrics_dir_is_ours:
        multiproc.remove(_metrics_dir)
