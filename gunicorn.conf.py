"""gunicorn settings. Read in the master; the service's own settings come from service.settings."""

import os

from service import settings as service_settings

_settings = service_settings.load_or_exit()

# nginx reaches the workers over a unix socket; the launcher (service/stack.py) or the container
# sets its path.
bind = [os.environ.get("GUNICORN_BIND", "unix:/run/fraud-scoring/gunicorn.sock")]
workers = _settings.workers
worker_class = "sync"  # scoring is CPU-bound and nginx absorbs slow clients
preload_app = True  # settings, model and schema load once in the master and are shared after fork
worker_tmp_dir = "/dev/shm"  # the heartbeat file must not sit on a slow or read-only disk
# A recycled worker leaves a gap of 30-80 ms and starts cold, which `make perf` saw as a 170 ms p99
# at half load when this was 20,000 (a restart every ~10 s per worker at 2,500 req/s). A million
# still bounds a slow leak, at minutes rather than seconds between restarts under load.
max_requests = 1_000_000
max_requests_jitter = 100_000  # workers recycle at different times, never all at once
timeout = 30
graceful_timeout = 20

control_socket_disable = True  # signals are the control interface (make reload)

logger_class = "service.logs.JsonGunicornLogger"
accesslog = "-"
errorlog = "-"
loglevel = "info"
proc_name = "fraud-scoring"
