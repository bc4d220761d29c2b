"""The one way the API process starts: `python -m service.runtime.serve` runs gunicorn with this
repository's gunicorn.conf.py. The container's CMD, `make run` (through stack/launcher.py) and the
integration tests all start it, so the tests exercise the command that production runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

GUNICORN_CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"
APP = "service.runtime.wsgi:application"


def argv(app: str = APP) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), app]


def main() -> None:
    # exec: gunicorn's master becomes this process, so signals from the container runtime or the
    # launcher reach it directly. A harness may name another WSGI callable (`make perf`'s bare
    # stack): `python -m service.runtime.serve module:callable`.
    command = argv(*sys.argv[1:2])
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
