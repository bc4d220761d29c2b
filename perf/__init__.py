"""`make perf`: the load harness and micro-benchmarks (see perf/README.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model, the artifact a benchmark scores with: MODEL_PATH as the service reads it, else the
    one `make model` trains."""
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("MODEL_PATH", "model/fraud-model.joblib")))


def existing_model(path: Path) -> Path:
    """The artifact's absolute path; one line and exit when there is none."""
    path = path.resolve()
    if not path.exists():
        sys.exit(f"no model at {path}: run `make model`")
    return path
