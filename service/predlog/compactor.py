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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from service.core.features import FEATURES
from service.core.settings import ConfigError, from_mapping, read_environment
from service.predlog.record import COLUMNS, SCHEMA_VERSION, arrow_schema
from service.predlog.sink import decode
from service.predlog.spool import NEW, OPEN, SEALED, seal_orphan, spool_dir, whole_frames
from service.predlog.status import STATE, compactor_state

POLL_SECONDS = 1.0
# A running compactor starts a pass POLL_SECONDS after one that found nothing, the next at once after
# one that did; a pass older than this means it is stuck or busy with a very large segment.
HEALTHY_SECONDS = 30
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


# A request's fields, the same for each of its rows: kept once a frame, then repeated by `take`.
PER_REQUEST = (
    "schema_version", "ts_ns", "request_id", "route", "explained", "key_id", "model_version", "model_sha256",
    "threshold", "challenger_version", "deadline", "service_us", "client_address", "trace_id",
)  # fmt: skip
META_NAMES = {"schema_version": "v", "ts_ns": "ts"}  # the frame's short names (service/predlog/sink.py)
CHALLENGER_DTYPES = {"challenger_probability": np.float64, "challenger_is_fraud": np.bool_}


def segment_table(payloads: list[memoryview]) -> pa.Table:
    """A segment's frames as one table of the record's schema. Built column by column with numpy and
    Arrow: a Python step per frame, never per row (a frame of a 1,000-row batch is one step)."""
    schema = arrow_schema()
    per_request: dict[str, list[Any]] = {name: [] for name in PER_REQUEST}
    arrays: dict[str, list[np.ndarray]] = {
        name: [] for name in ("X", "probability", "fraud_score", "is_fraud", "sample_weight", "row", "ood_count")
    }
    challenger: dict[str, list[np.ndarray]] = {name: [] for name in CHALLENGER_DTYPES}
    transaction_ids: list[Any] = []
    ood_names: list[str] = []
    reasons: list[Any] = []
    sizes: list[int] = []
    for payload in payloads:
        meta, found = decode(payload)
        n = meta["n"]
        sizes.append(n)
        for name in ("X", "probability", "fraud_score", "is_fraud", "sample_weight"):
            arrays[name].append(found[name])
        for name, values in challenger.items():
            values.append(found[name] if name in found else np.zeros(n, CHALLENGER_DTYPES[name]))
        for name in PER_REQUEST:
            per_request[name].append(meta.get(META_NAMES.get(name, name)))  # a frame of version 1 has no trace_id
        arrays["row"].append(
            np.asarray(meta["rows"], dtype=np.int32) if "rows" in meta else np.arange(n, dtype=np.int32)
        )
        tid = meta.get("tid")
        transaction_ids.extend(tid if isinstance(tid, list) else [tid] * n)
        counts = np.zeros(n, dtype=np.int32)
        for i, names in meta.get("ood", ()):
            counts[i] = len(names)
            ood_names.extend(names)
        arrays["ood_count"].append(counts)
        explained = meta.get("reasons")
        reasons.extend(explained if explained is not None else [None] * n)
    joined = {name: np.concatenate(found) if found else np.empty(0) for name, found in arrays.items()}
    frame_of_row = pa.array(np.repeat(np.arange(len(sizes)), sizes))

    def repeated(name: str, values: list[Any]) -> pa.Array:
        if name in ("ts_ns", "deadline"):
            once = _timestamps(values) if name == "deadline" else pa.array(values, pa.int64())
        else:
            once = pa.array(values, schema.field(name).type)
        return once.take(frame_of_row)

    data: dict[str, Any] = {name: repeated(name, values) for name, values in per_request.items()}
    data["ts"] = _timestamps(per_request["ts_ns"]).take(frame_of_row)
    logged = pc.is_valid(data["challenger_version"]).to_numpy(zero_copy_only=False)
    for name, found in challenger.items():
        values = np.concatenate(found) if found else np.empty(0, CHALLENGER_DTYPES[name])
        data[name] = pa.array(values, type=schema.field(name).type, mask=~logged)
    X = joined["X"].reshape(-1, len(FEATURES))
    for j, name in enumerate(FEATURES):
        data[name] = X[:, j]
    for name in ("probability", "fraud_score", "is_fraud", "sample_weight", "row"):
        data[name] = joined[name]
    counts = joined["ood_count"].astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    data["ood_features"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ood_names, pa.string()))
    data["ood_warning"] = counts > 0
    data["transaction_id"] = transaction_ids
    data["reasons"] = reasons
    return pa.table(
        {
            c.name: data[c.name]
            if isinstance(data[c.name], pa.Array)
            else pa.array(data[c.name], schema.field(c.name).type)
            for c in COLUMNS
        },
        schema=schema,
    )


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
        elif path.suffix == NEW:
            # a worker's segment being born: renamed `.open` a moment later, unless its worker died
            # in between; it may be gone by the time it is looked at
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > STALE_NEW_SECONDS:
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
        try:
            done = compact(directory)
        except Exception:  # a pass that fails must not end the compactor: the next one tries again
            log.exception("a compaction pass failed; the next one starts in %s s", POLL_SECONDS)
            done = Pass()
        if done.segments:
            log.info("compacted %d segments, %d rows", done.segments, done.rows)
        if args.once or last:
            return 0
        if done.segments:
            continue  # more were sealed while this pass ran: waiting now would only let them pile up
        deadline = time.monotonic() + POLL_SECONDS
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
