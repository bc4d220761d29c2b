"""The container's HEALTHCHECK: GET /health from gunicorn over its unix socket (the api container
has no TCP port and no curl). Exit status 0 when healthy, 1 otherwise; one line either way."""

from __future__ import annotations

import http.client
import os
import socket
import sys


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def check(bind: str, timeout: float = 3.0) -> tuple[bool, str]:
    if not bind.startswith("unix:"):
        return False, f"GUNICORN_BIND {bind!r} is not a unix socket"
    conn = UnixHTTPConnection(bind.removeprefix("unix:"), timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = response.read()
    except OSError as e:
        return False, f"unhealthy: {e}"
    finally:
        conn.close()
    return response.status == 200, f"{response.status} {body.decode(errors='replace').strip()}"


def main() -> int:
    healthy, line = check(os.environ.get("GUNICORN_BIND", "unix:/run/fraud-scoring/gunicorn.sock"))
    print(line)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
