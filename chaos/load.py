"""Load for fault scenarios: wrk for throughput, and a small client of its own that tells a request
refused before it was processed (safe to retry) from one cut half-way, which wrk cannot. Used by
`make chaos` (native stack) and the container tests (the same faults inside podman)."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    socket_errors: int
    text: str

    @property
    def failures(self) -> int:
        return self.non_2xx + self.socket_errors


def start_wrk(url: str, script: Path, seconds: int, connections: int) -> subprocess.Popen:
    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is not installed: run `make install` (apt-get install wrk)")
    return subprocess.Popen(
        [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_wrk(process: subprocess.Popen) -> WrkResult:
    text = process.communicate(timeout=120)[0]
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(requests, non_2xx, sum(int(g) for g in errors.groups()) if errors else 0, text)


def wrk_script(path: Path, body: str, key: str) -> Path:
    """A wrk script that POSTs one scoring request with the key."""
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-API-Key"] = "{key}"\n'
    )
    return path


class Clients:
    """Threads that POST one scoring request per connection until stopped, counting outcomes: ok,
    refused (no connection, or closed before a response byte: never processed), error_status (a
    complete non-200 answer, with its status in `statuses`) and cut (a response broken off)."""

    def __init__(
        self, host: str, port: int, body: str, key: str, threads: int, headers: dict[str, str] | None = None
    ) -> None:
        self.host, self.port, self.body = host, port, body.encode()
        self.headers = {"Content-Type": "application/json", "X-API-Key": key, **(headers or {})}
        self.counts = {"ok": 0, "refused": 0, "cut": 0, "error_status": 0}
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self.snapshot()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _one(self) -> tuple[str, int | None]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            try:
                conn.request("POST", "/v1/fraud-score", self.body, self.headers)
            except OSError:
                return "refused", None  # no longer accepted: never processed, safe to retry
            try:
                response = conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected):
                return "refused", None  # closed before a single response byte: not processed
            try:
                data = response.read()
                if response.status != 200:
                    return "error_status", response.status
                if "fraud-score" not in json.loads(data):
                    return "cut", None
            except (http.client.IncompleteRead, OSError, ValueError):
                return "cut", None
            return "ok", 200
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            outcome, status = self._one()
            with self._lock:
                self.counts[outcome] += 1
                if outcome == "error_status":
                    self.statuses[status] = self.statuses.get(status, 0) + 1
            if outcome != "ok":
                time.sleep(0.01)
