"""The compactor: sealed spool segments into Parquet files (zstd) under
PREDICTION_LOG_DIR/date=YYYY-MM-DD/hour=HH/, a process of its own beside gunicorn.

Each segment becomes one file per hour its records fall in, named after the segment
(`part-<segment>.parquet`): written under a temporary name, fsync'd, renamed into place, the
directory fsync'd, and only then is the segment deleted. A compactor killed anywhere in that
sequence, run again, rewrites the same files under the same names: no row is written twice and none
is lost. Segments whose worker died without sealing them are sealed first (their torn tail cut).

    python -m service.predlog.compactor          # runs until SIGTERM (the launcher, a sidecar)
    python -m service.predlog.compactor --once   # one pass (make compact)
    python -m service.predlog.compactor --healthy   # the sidecar's probe: a pass finished lately"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from service.core.features import FEATURES
from service.core.settings import ConfigError, from_mapping, read_environment
from service.predlog.record import COLUMNS, SCHEMA_VERSION, arrow_schema
from service.predlog.sink import decode
from service.predlog.spool import NEW, OPEN, SEALED, seal_orphan, spool_dir, whole_frames
from service.predlog.status import STATE, compactor_state

POLL_SECONDS = 1.0
HEALTHY_SECONDS = 30  # a running compactor finishes a pass every POLL_SECONDS, or is busy with a large one
TEMPORARY = ".tmp"
STALE_NEW_SECONDS = 60  # a `.new` segment is renamed within microseconds; older, its writer died first
HOUR_NS = 3600 * 10**9

log = logging.getLogger("service.predlog.compactor")


@dataclass
class Pass:
    segments: int = 0
    rows: int = 0
    files: list[Path] = field(default_factory=list)
    orphans: int = 0


def segment_table(payloads: list[memoryview]) -> pa.Table:
    """A segment's frames as one table of the record's schema."""
    columns: dict[str, list[Any]] = {c.name: [] for c in COLUMNS}
    arrays: dict[str, list[np.ndarray]] = {
        name: []
        for name in ("X", "probability", "fraud_score", "is_fraud", "sample_weight")
        + ("challenger_probability", "challenger_is_fraud")
    }
    for payload in payloads:
        meta, found = decode(payload)
        n = meta["n"]
        for name in ("X", "probability", "fraud_score", "is_fraud", "sample_weight"):
            arrays[name].append(found[name])
        if "challenger_probability" in found:
            arrays["challenger_probability"].append(found["challenger_probability"])
            arrays["challenger_is_fraud"].append(found["challenger_is_fraud"])
        else:
            arrays["challenger_probability"].append(np.full(n, np.nan))
            arrays["challenger_is_fraud"].append(np.zeros(n, np.bool_))
        for name in ("request_id", "route", "explained", "key_id", "model_version", "model_sha256", "threshold"):
            columns[name].extend([meta[name]] * n)
        columns["schema_version"].extend([meta["v"]] * n)
        columns["ts_ns"].extend([meta["ts"]] * n)
        columns["challenger_version"].extend([meta["challenger_version"]] * n)
        columns["deadline"].extend([meta.get("deadline")] * n)
        columns["service_us"].extend([meta["service_us"]] * n)
        columns["client_address"].extend([meta.get("client_address")] * n)
        columns["trace_id"].extend([meta.get("trace_id")] * n)  # a frame of version 1 has none
        columns["row"].extend(meta["rows"] if "rows" in meta else range(n))
        tid = meta.get("tid")
        columns["transaction_id"].extend(tid if isinstance(tid, list) else [tid] * n)
        ood: list[list[str]] = [[] for _ in range(n)]
        for i, names in meta.get("ood", ()):
            ood[i] = names
        columns["ood_features"].extend(ood)
        columns["ood_warning"].extend(bool(names) for names in ood)
        reasons = meta.get("reasons")
        columns["reasons"].extend(reasons if reasons is not None else [None] * n)
    challenger = np.array([v is not None for v in columns["challenger_version"]], dtype=np.bool_)
    X = np.concatenate(arrays["X"]) if arrays["X"] else np.empty((0, len(FEATURES)))
    data: dict[str, Any] = dict(columns)
    for name in ("probability", "fraud_score", "is_fraud", "sample_weight"):
        data[name] = np.concatenate(arrays[name]) if arrays[name] else np.empty(0)
    for name in ("challenger_probability", "challenger_is_fraud"):
        values = np.concatenate(arrays[name]) if arrays[name] else np.empty(0)
        data[name] = pa.array(values, mask=~challenger)
    for j, name in enumerate(FEATURES):
        data[name] = X[:, j]
    data["ts"] = _timestamps(columns["ts_ns"])
    data["deadline"] = _timestamps(columns["deadline"])
    schema = arrow_schema()
    return pa.table({c.name: pa.array(data[c.name], type=schema.field(c.name).type) for c in COLUMNS}, schema=schema)


def _timestamps(nanoseconds: list[int | None]) -> pa.Array:
    """Nanoseconds since the epoch as the record's timestamps (microseconds, which Spark reads)."""
    return pa.array(nanoseconds, pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("us", tz="UTC"), safe=False)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(table: pa.Table, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}{TEMPORARY}")
    pq.write_table(table, temporary, compression="zstd")
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)
    _fsync_dir(target.parent)


def partition(directory: Path, hour: int) -> Path:
    when = time.gmtime(hour * 3600)
    return directory / time.strftime("date=%Y-%m-%d", when) / time.strftime("hour=%H", when)


def compact_segment(segment: Path, directory: Path) -> tuple[int, list[Path]]:
    """One sealed segment into its hours' Parquet files, then the segment removed."""
    data = segment.read_bytes()
    payloads, whole = whole_frames(data)
    if whole != len(data):
        log.warning("segment %s: %d bytes after the last whole frame ignored", segment.name, len(data) - whole)
    written = []
    rows = 0
    if payloads:
        table = segment_table(payloads)
        rows = table.num_rows
        hours = table.column("ts_ns").to_numpy() // HOUR_NS
        for hour in np.unique(hours).tolist():
            part = table.filter(pa.array(hours == hour))
            target = partition(directory, hour) / f"part-{segment.stem}.parquet"
            write_atomically(part, target)
            written.append(target)
    os.unlink(segment)
    _fsync_dir(segment.parent)
    return rows, written


def compact(directory: Path) -> Pass:
    """One pass: seal the orphans, compact every sealed segment (oldest first), record the pass."""
    directory = Path(directory)
    spool = spool_dir(directory)
    done = Pass()
    if not spool.is_dir():
        return done
    now = time.time()
    for path in sorted(spool.iterdir()):
        if path.suffix == OPEN and seal_orphan(path) is not None:
            done.orphans += 1
            log.info("sealed %s, whose worker is gone", path.name)
        elif path.suffix == NEW and now - path.stat().st_mtime > STALE_NEW_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    for segment in sorted(spool.glob(f"*{SEALED}")):
        rows, files = compact_segment(segment, directory)
        done.segments += 1
        done.rows += rows
        done.files += files
    for stale in directory.glob(f"date=*/hour=*/.*{TEMPORARY}"):  # a pass killed mid-file
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    record_pass(spool, done)
    return done


def record_pass(spool: Path, done: Pass) -> None:
    state = {
        "last_success": time.time(),
        "segments": done.segments,
        "rows": done.rows,
        "orphans": done.orphans,
        "pid": os.getpid(),
        "schema_version": SCHEMA_VERSION,
    }
    temporary = spool / f".{STATE}{TEMPORARY}"
    temporary.write_bytes(orjson.dumps(state))
    os.replace(temporary, spool / STATE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument(
        "--healthy", action="store_true", help=f"exit 0 if a pass finished in the last {HEALTHY_SECONDS} s (a probe)"
    )
    parser.add_argument("--dir", type=Path, help="the log's directory (default: PREDICTION_LOG_DIR)")
    parser.add_argument(
        "--default-dir", type=Path, help="the directory when neither --dir nor PREDICTION_LOG_DIR names one"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s compactor %(levelname)s %(message)s")
    directory = args.dir
    if directory is None:
        try:
            directory = from_mapping(read_environment(), require_api_key=False).prediction_log_dir
        except ConfigError as e:
            sys.exit(f"config error: {e}")
        directory = directory or args.default_dir
        if directory is None:
            sys.exit("config error: PREDICTION_LOG_DIR is not set: there is no prediction log to compact")
    if args.healthy:
        state = compactor_state(directory) or {}
        return 0 if time.time() - state.get("last_success", 0.0) < HEALTHY_SECONDS else 1
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while True:
        last = stopping  # asked to stop: one more whole pass, for what the workers sealed as they left
        done = compact(directory)
        if done.segments:
            log.info("compacted %d segments, %d rows", done.segments, done.rows)
        if args.once or last:
            return 0
        deadline = time.monotonic() + POLL_SECONDS
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
