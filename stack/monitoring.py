"""Prometheus beside a running stack, with the exporters of nginx's side: `make run MONITORING=1`
and the monitoring tests start the same processes, all from Debian's packages.

- mtail runs nginx/access_log.mtail over nginx's JSON access log: every request nginx answered, by
  status and by `refused_by` (its own 429s, 413s, 503s… that the app never sees), with nginx's time;
- prometheus-nginx-exporter reads nginx's stub_status (a unix socket in nginx's run directory):
  connections accepted, active, reading, writing, waiting;
- Prometheus scrapes both and the app's /metrics (through nginx, from loopback) and evaluates
  deploy/prometheus/rules.yml.

Each listens on a free loopback port; their config, data and output (monitoring.log) live in a
directory of the caller's."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stack.harness import free_port
from stack.launcher import ROOT, Stack, http_get

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
MTAIL_PROGRAM = ROOT / "nginx" / "access_log.mtail"
# The scrape jobs deploy/prometheus/rules.yml's alerts name (FraudScrapeTargetDown: fraud-.*).
APP_JOB, NGINX_LOG_JOB, NGINX_JOB = "fraud-app", "fraud-nginx-log", "fraud-nginx"


def find_program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{name} is not installed: run `make run MONITORING=1` (it installs Debian's packages)")
    return found


def prometheus_config(app: str, nginx_log: str, nginx: str, interval: str) -> dict:
    """Prometheus' configuration (JSON is YAML): the three jobs, every `interval`, and the rules."""
    jobs = ((APP_JOB, app), (NGINX_LOG_JOB, nginx_log), (NGINX_JOB, nginx))
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in jobs],
    }


@dataclass
class Monitoring:
    """Prometheus, mtail and prometheus-nginx-exporter for `stack`, whose nginx writes its access
    log to `access_log` (a file: mtail follows it, rotations included)."""

    stack: Stack
    access_log: Path
    work_dir: Path
    interval: str = "15s"
    processes: list[subprocess.Popen] = field(default_factory=list)
    mtail_port: int = 0
    exporter_port: int = 0
    prometheus_port: int = 0

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def log(self) -> Path:
        return self.work_dir / "monitoring.log"

    def start(self, timeout: float = 60.0) -> Monitoring:
        try:
            self.mtail_port = self._serve(
                "mtail",
                lambda port: [
                    find_program("mtail"),
                    "--progs",
                    str(MTAIL_PROGRAM),
                    "--logs",
                    str(self.access_log),
                    "--address",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--emit_prog_label=false",
                    "--logtostderr",
                ],
                "/metrics",
                timeout,
            )
            self.exporter_port = self._serve(
                "prometheus-nginx-exporter",
                lambda port: [
                    find_program("prometheus-nginx-exporter"),
                    f"-nginx.scrape-uri=unix:{self.stack.run_dir / 'nginx-status.sock'}:/stub_status",
                    f"-web.listen-address=127.0.0.1:{port}",
                ],
                "/metrics",
                timeout,
            )
            self.prometheus_port = self._serve("prometheus", self._prometheus, "/-/ready", timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def _prometheus(self, port: int) -> list[str]:
        app, mtail, exporter = (f"127.0.0.1:{p}" for p in (self.stack.port, self.mtail_port, self.exporter_port))
        config = self.work_dir / "prometheus.yml"
        config.write_text(json.dumps(prometheus_config(app, mtail, exporter, self.interval), indent=2))
        return [
            find_program("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.work_dir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]

    def _serve(self, name: str, command: Callable[[int], list[str]], ready_path: str, timeout: float) -> int:
        """Starts `name` on a free loopback port and waits until `ready_path` answers 200; another
        process may take the port between the probe and the bind, so a start that exits is retried."""
        for _attempt in range(3):
            port = free_port()
            with self.log.open("a") as out:
                process = subprocess.Popen(
                    command(port), cwd=self.work_dir, stdout=out, stderr=out, start_new_session=True
                )
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    if http_get("127.0.0.1", port, ready_path)[0] == 200:
                        self.processes.append(process)
                        return port
                except OSError:
                    pass
                time.sleep(0.1)
            _stop(process)
        raise RuntimeError(f"{name} did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            _stop(process)
        self.processes.clear()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
