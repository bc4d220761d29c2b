"""Runs the real stack: gunicorn (master + pre-forked workers) behind nginx, and beside them the
prediction log's compactor when PREDICTION_LOG_DIR is set.

Used by `make run` (`python -m stack`), the integration tests and `make perf`, so all
three exercise the same processes and the same rendered nginx config."""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from service.core import settings as settings_module
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "nginx" / "nginx.conf.template"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render_nginx_config(template: str, values: Mapping[str, str]) -> str:
    """Substitutes ${NAME} placeholders, like envsubst restricted to the names given."""
    missing = sorted({m for m in PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise KeyError(f"no value for {', '.join(missing)} in the nginx template")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def nginx_values(
    settings: Settings,
    run_dir: Path,
    socket: Path,
    access_log: str = "/dev/stdout",
    mtail_socket: Path | None = None,
) -> dict[str, str]:
    """The template's values. `mtail_socket`: where mtail beside nginx receives the access log's
    lines as datagrams (the containers); natively mtail follows the access log's file instead."""
    return {
        # As root, nginx's master keeps root and its workers drop to an unprivileged user.
        "NGINX_USER_LINE": "user nobody nogroup;" if os.geteuid() == 0 else "",
        "NGINX_WORKERS": "1",
        "NGINX_RUN_DIR": str(run_dir),
        "NGINX_ACCESS_LOG": access_log,
        "NGINX_MTAIL_LOG_LINE": (
            f"access_log syslog:server=unix:{mtail_socket},nohostname,tag=nginx json_datagram;" if mtail_socket else ""
        ),
        "NGINX_LISTEN": f"{settings.host}:{settings.port}",
        "GUNICORN_UPSTREAM": f"unix:{socket}",
        "CLIENT_MAX_BODY_SIZE": f"{settings_module.CLIENT_MAX_BODY_KB}k",
        "BATCH_MAX_BODY_SIZE": f"{settings.batch_body_kb}k",
        "RATE_LIMIT_PER_KEY": str(settings.rate_limit_per_key),
        "RATE_LIMIT_PER_IP": str(settings.rate_limit_per_ip),
        "RATE_LIMIT_BURST": str(settings.rate_limit_burst),
        "SCORING_QUEUE": str(settings.scoring_queue),
        "METRICS_ALLOW_LINES": " ".join(f"{net} 1;" for net in settings.metrics_allow),
        "REAL_IP_LINES": " ".join(
            [f"set_real_ip_from {net};" for net in settings.trusted_proxies]
            + (["real_ip_header X-Forwarded-For; real_ip_recursive on;"] if settings.trusted_proxies else [])
        ),
    }


def find_nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )
    if not found:
        raise RuntimeError("nginx is not installed: run `make install` (apt-get install nginx)")
    return found


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def find_redis_server() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if not found:
        raise RuntimeError("redis-server is not installed: run `make install` (apt-get install redis-server)")
    return found


@dataclass
class RedisServer:
    """A local feature store: `make run` starts one when FEATURE_STORE_START is true, the tests
    start one per test module on a free port. Listens on loopback only, and on `unix_socket` too
    when given (a store beside the service, reached without TCP; port 0: on the socket only); no
    persistence unless a data directory is given."""

    port: int
    data_dir: Path | None = None
    stdout: IO[str] | int | None = subprocess.DEVNULL
    process: subprocess.Popen | None = None
    unix_socket: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        if self.unix_socket is None:
            raise ValueError("this redis-server listens on no unix socket")
        return f"unix://{self.unix_socket}?db=0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        persistence = (
            ["--dir", str(self.data_dir), "--save", "60 1000"]
            if self.data_dir
            else ["--save", "", "--appendonly", "no"]
        )
        # Owner-only: the socket is the store's only access control besides loopback.
        unix = ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"] if self.unix_socket else []
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "yes",
                *persistence,
                *unix,
            ],
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on {self.port or self.unix_socket}")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        try:
            if self.port:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            else:  # port 0: the unix socket only
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(0.5)
                s.connect(str(self.unix_socket))
            with s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    """nginx + gunicorn, started together and stopped together."""

    settings: Settings
    env: dict[str, str]
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fraud-scoring-")))
    stdout: IO[str] | int | None = None
    stderr: IO[str] | int | None = None
    access_log: str = "/dev/stdout"
    app: str | None = None  # another WSGI callable than the service's (`make perf`'s bare stack)
    # A command that gunicorn runs inside (it must exec the rest), e.g. a test's mount namespace.
    wrapper: tuple[str, ...] = ()
    # A command every server process of the stack runs inside (it must exec the rest), e.g. `taskset`
    # confining the stack to some cores (`make perf PLACEMENT=split`).
    confine: tuple[str, ...] = ()
    # The compactor's, when not `confine`: the cores of a container of its own (perf/placement.py).
    sidecar_confine: tuple[str, ...] | None = None
    gunicorn: subprocess.Popen | None = None
    nginx: subprocess.Popen | None = None
    compactor: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.run_dir / "gunicorn.sock"

    @property
    def port(self) -> int:
        return self.settings.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.settings.port}"

    def start(self, timeout: float = 60.0) -> Stack:
        """Both servers run in sessions of their own, so a terminal's Ctrl-C reaches only the
        launcher, which then stops them gracefully (their own SIGINT handling is a fast stop)."""
        # nginx's workers run unprivileged: they may traverse the directory (to reach the socket
        # and their temp files) but not list it.
        self.run_dir.chmod(0o711)
        conf = self.run_dir / "nginx.conf"
        conf.write_text(
            render_nginx_config(
                TEMPLATE.read_text(), nginx_values(self.settings, self.run_dir, self.socket, self.access_log)
            )
        )
        nginx = find_nginx()
        check = subprocess.run(
            [*self.confine, nginx, "-t", "-q", "-p", str(self.run_dir), "-c", str(conf)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected its config: {check.stderr.strip()}")
        # Metrics samples live in the run directory: fresh per stack, removed with it.
        env = {
            "PROMETHEUS_MULTIPROC_DIR": str(self.run_dir / "metrics"),
            "GUNICORN_PIDFILE": str(self.run_dir / "gunicorn.pid"),
            **self.env,
            "GUNICORN_BIND": f"unix:{self.socket}",
        }
        serve = [sys.executable, "-m", "service.runtime.serve"]
        self.gunicorn = subprocess.Popen(
            [*self.confine, *self.wrapper, *serve] + ([self.app] if self.app else []),
            cwd=ROOT,
            env=env,
            stdout=self.stdout,
            stderr=self.stderr,
            start_new_session=True,
        )
        self._wait(lambda: self.socket.exists(), self.gunicorn, "gunicorn", timeout)
        if self.settings.prediction_log_dir is not None:
            self.compactor = subprocess.Popen(
                [
                    *(self.confine if self.sidecar_confine is None else self.sidecar_confine),
                    sys.executable,
                    "-m",
                    "service.predlog.compactor",
                ],
                cwd=ROOT,
                env=env,
                stdout=self.stdout,
                stderr=self.stderr,
                start_new_session=True,
            )
        self.nginx = subprocess.Popen(
            [*self.confine, nginx, "-p", str(self.run_dir), "-c", str(conf), "-g", "daemon off;"],
            cwd=self.run_dir,
            stdout=self.stdout,
            stderr=self.stderr,
            start_new_session=True,
        )
        self._wait(self._healthy, self.nginx, "nginx", timeout)
        return self

    def _healthy(self) -> bool:
        """Up means the app answers /health: 200, or 503 from the app itself when it runs
        without a model (graceful degradation), not nginx's 503 for an unreachable upstream."""
        try:
            status, body = http_get(self.host, self.settings.port, "/health")
        except OSError:
            return False
        return status == 200 or (status == 503 and b'"model_loaded":false' in body)

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host

    def _wait(self, ready, process: subprocess.Popen, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name} exited with status {process.returncode} during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} was not ready within {timeout:.0f} s")
            time.sleep(0.05)

    def reload(self) -> None:
        """Zero-downtime model rollout: SIGHUP makes the gunicorn master load the model now at
        MODEL_PATH, fork new workers from it, then retire the old ones gracefully."""
        assert self.gunicorn is not None
        self.gunicorn.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: nginx finishes its in-flight requests (SIGQUIT), then gunicorn's workers
        finish theirs (SIGTERM) and seal their prediction-log segments, which the compactor then
        compacts in its last pass (SIGTERM)."""
        stopping = ((self.nginx, signal.SIGQUIT), (self.gunicorn, signal.SIGTERM), (self.compactor, signal.SIGTERM))
        for process, sig in stopping:
            if process is None or process.poll() is not None:
                continue
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_feature_store(settings: Settings, data_dir: Path = ROOT / ".run" / "redis") -> RedisServer | None:
    """With FEATURE_STORE_START, a redis-server for FEATURE_STORE_URL (a loopback port or a unix
    socket), its data kept in data_dir."""
    if not settings.feature_store_start:
        return None
    url = urlsplit(settings.feature_store_url or "")
    if url.scheme == "unix" and url.path:
        data_dir.mkdir(parents=True, exist_ok=True)
        store = RedisServer(0, data_dir=data_dir, unix_socket=Path(url.path)).start()
        where = store.unix_url
    elif url.scheme == "redis" and url.hostname in ("127.0.0.1", "localhost"):
        data_dir.mkdir(parents=True, exist_ok=True)
        store = RedisServer(url.port or 6379, data_dir=data_dir).start()
        where = store.url
    else:
        raise RuntimeError(
            "FEATURE_STORE_START needs FEATURE_STORE_URL to be redis://127.0.0.1:PORT or unix:///PATH (a local store)"
        )
    print(f"feature store: redis-server on {where}, data in {data_dir}", file=sys.stderr)
    return store


def with_local_prediction_log(settings: Settings, directory: Path | None) -> Settings:
    """`make run` keeps a prediction log: in `directory` (the Makefile's) unless PREDICTION_LOG_DIR
    names another place."""
    if settings.prediction_log_dir is None and directory is not None:
        os.environ["PREDICTION_LOG_DIR"] = str(directory)
        settings = dataclasses.replace(settings, prediction_log_dir=directory)
    if settings.prediction_log_dir is not None:
        print(f"prediction log: {settings.prediction_log_dir} (make compact, make verify-log)", file=sys.stderr)
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve through nginx until Ctrl-C")
    parser.add_argument(
        "--default-prediction-log", type=Path, help="the prediction log's directory, if no setting names one"
    )
    parser.add_argument(
        "--monitoring",
        action="store_true",
        help="Prometheus, mtail and the nginx exporter beside the stack (stack/monitoring.py); nginx's "
        "access log then goes to a file in the run directory, which mtail follows",
    )
    args = parser.parse_args(argv)
    monitoring_asked = args.monitoring
    settings = with_local_prediction_log(settings_module.load_or_exit(), args.default_prediction_log)
    try:
        store = local_feature_store(settings)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stack = Stack(settings, env=dict(os.environ))
    if monitoring_asked:
        stack.access_log = str(stack.run_dir / "access.log")
    monitoring = None
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.start()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        if store is not None:
            store.stop()
        return 1
    if monitoring_asked:
        from stack.monitoring import Monitoring  # only here: it needs the harness, which imports this module

        try:
            monitoring = Monitoring(stack, Path(stack.access_log), stack.run_dir).start()
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            stack.stop()
            if store is not None:
                store.stop()
            return 1
        print(
            f"\nPrometheus: {monitoring.prometheus_url}  (alerts: {monitoring.prometheus_url}/alerts)\n"
            f"nginx's access log: tail -f {stack.access_log}",
            file=sys.stderr,
        )
    url = stack.base_url
    status, body = http_get(stack.host, settings.port, "/health")
    if status != 200:
        print(f"warning: serving without a model (every scoring request gets 503): {body.decode()}", file=sys.stderr)
    print(
        f"\nfraud scoring is up at {url}  (Ctrl-C stops nginx and gunicorn)\n\n"
        f"  curl -s {url}/health\n"
        f"  curl -s -X POST {url}/v1/fraud-score -H 'Content-Type: application/json' \\\n"
        f'       -H "X-API-Key: $(grep ^API_KEY= .env | cut -d= -f2 | cut -d, -f1)" \\\n'
        f"       --data @service/contract/schemas/transaction.example.json\n",
        file=sys.stderr,
        flush=True,
    )
    status = 0
    while not stopping:
        for name, process in (("gunicorn", stack.gunicorn), ("nginx", stack.nginx), ("compactor", stack.compactor)):
            if process and process.poll() is not None:
                print(f"error: {name} exited with status {process.returncode}", file=sys.stderr)
                stopping, status = True, 1
        time.sleep(0.2)
    print("stopping nginx and gunicorn…", file=sys.stderr)
    if monitoring is not None:
        monitoring.stop()
    stack.stop()
    if store is not None:
        store.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
