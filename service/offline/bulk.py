"""Bulk scoring on one machine: a CSV or Parquet file of transactions in, scores out.

    python -m service.offline.bulk IN OUT [--rejects PATH] [--workers N] [--chunk-rows N] [--explain]

The model is the service's: MODEL_PATH (and MODEL_SHA256, MODEL_VERSION, FRAUD_THRESHOLD, OOD_Z)
from the environment or `.env`, verified and memory-mapped by the service's loader. The file is
read in chunks, so memory stays bounded whatever its size. The chunks are scored by worker
processes forked after the model is loaded: they all read the one memory-mapped artifact (the
page cache's pages), none holds a copy. Rows that cannot be scored go to the rejects file with
their row number and the reason; a missing feature column or an unreadable file stops the run
with one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from service.core import settings as settings_module
from service.core.artifacts import ArtifactError
from service.offline.errors import BulkError
from service.offline.score_file import CHUNK_ROWS, score_file
from service.offline.tables import Engine
from service.offline.workers import Workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.offline.bulk",
        description="Score a CSV or Parquet file of transactions with the service's model (MODEL_PATH).",
    )
    parser.add_argument("input", type=Path, help="CSV (with a header) or Parquet (.parquet, .pq)")
    parser.add_argument("output", type=Path, help="Parquet (.parquet, .pq) or CSV (.csv), by extension")
    parser.add_argument("--rejects", type=Path, help="refused rows: row number and reason (default OUTPUT.rejects.csv)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="scoring processes (default: cores)")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help=f"rows a chunk (default {CHUNK_ROWS:,})")
    parser.add_argument("--explain", action="store_true", help="add the service's reasons (JSON) to every row")
    parser.add_argument("--with-features", action="store_true", help="also write the 30 features (as numbers)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.chunk_rows < 1:
        parser.error("--workers and --chunk-rows must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        settings = settings_module.from_mapping(settings_module.read_environment(), require_api_key=False)
    except settings_module.ConfigError as e:
        sys.exit(f"config error: {e}")
    try:
        engine = Engine.load(settings)
    except ArtifactError as e:
        sys.exit(f"model error: {e}")
    workers = Workers(engine, args.workers)
    try:
        summary = score_file(
            engine,
            workers,
            args.input,
            args.output,
            rejects_path=args.rejects,
            chunk_rows=args.chunk_rows,
            explain=args.explain,
            with_features=args.with_features,
            progress=sys.stderr.isatty(),
        )
    except BulkError as e:
        sys.exit(f"bulk: {e}")
    except KeyboardInterrupt:
        sys.exit("bulk: interrupted; no output written")
    finally:
        workers.close()
    print(f"model {engine.model.version}, threshold {engine.threshold}: {summary.line()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
