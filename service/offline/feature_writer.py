"""`make features IN=…`: load transactions' features into the online feature store.

    python -m service.offline.feature_writer transactions.parquet [--id-column transaction_id] [--ttl 86400]
    python -m service.offline.feature_writer creditcard.csv --row-ids     # the published file: no id column

Reads CSV or Parquet (an id column and the 30 feature columns, in any order; other columns are
ignored) in chunks through bulk scoring's reader (service/offline/source.py), refuses each row the
service would refuse exactly as bulk scoring does (service/offline/tables.py: a feature missing, not a
number, not finite or beyond the float32 range, as the HTTP contract checks a posted transaction),
and writes each accepted row's record (service/store/feature_record.py) under FEATURE_STORE_PREFIX + id
with pipelined SETs, one round trip per chunk. Refused rows go to a rejects file (CSV: row number,
id, reason) and are counted; a missing column or an unreadable file stops at once with one line."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis
from tqdm import tqdm

from service.contract.schema import id_document
from service.core import settings as settings_module
from service.core.features import FEATURES
from service.offline.errors import BulkError
from service.offline.source import Source, rows_in_file
from service.offline.tables import TableError, read_features
from service.store.feature_record import encode_record
from service.store.feature_store import redacted

CHUNK_ROWS = 5000
ID_MAX = id_document()["maxLength"]  # the longest id the by-id routes take: a longer one could never be read


class InputError(Exception):
    """The input cannot be read as transactions: the message is the one line shown."""


@dataclass
class Summary:
    rows: int = 0
    written: int = 0
    rejected: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (
            f"{self.written:,} records written, {self.rejected:,} rejected of {self.rows:,} rows "
            f"in {self.seconds:.1f} s ({rate:,.0f} rows/s)"
        )


def open_source(path: Path, id_column: str | None) -> Source:
    try:
        source = Source(path, CHUNK_ROWS)
    except BulkError as e:
        raise InputError(str(e)) from None
    missing = [c for c in ([id_column] if id_column else []) + list(FEATURES) if c not in source.schema.names]
    if missing:
        raise InputError(f"{path}: missing columns {', '.join(missing)}")
    return source


def load(
    path: Path,
    client: redis.Redis,
    prefix: str,
    rejects: Path,
    id_column: str | None = "transaction_id",
    ttl: int | None = None,
    progress: bool | None = None,
) -> Summary:
    """id_column None: each row's number in the file is its id (1 for the first after the header,
    as the rejects file numbers rows)."""
    source = open_source(path, id_column)
    summary = Summary()
    started = time.monotonic()
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with (
            open(rejects, "w", newline="") as rejected,
            tqdm(total=source.total_rows, unit=" rows", unit_scale=True, disable=not show, desc="features") as bar,
        ):
            out = csv.writer(rejected)
            out.writerow(["row", id_column or "id", "reason"])
            for batch in source.batches():
                columns, _, reasons = read_features(batch)
                rows = np.column_stack(columns).tolist()
                ids = (
                    batch.column(id_column).cast(pa.string()).to_pylist()
                    if id_column
                    else [str(summary.rows + i + 1) for i in range(batch.num_rows)]
                )
                pipe = client.pipeline(transaction=False)
                for i, transaction_id in enumerate(ids):
                    if not transaction_id:
                        reason = f"{id_column} is empty"
                    elif len(transaction_id) > ID_MAX:
                        reason = f"{id_column} is longer than {ID_MAX} characters"
                    elif i in reasons:
                        reason = reasons[i]
                    else:
                        pipe.set(prefix + transaction_id, encode_record(rows[i]), ex=ttl)
                        continue
                    summary.rejected += 1
                    out.writerow([summary.rows + i + 1, transaction_id, reason])
                summary.rows += batch.num_rows
                summary.written += len(pipe)
                pipe.execute()
                bar.update(batch.num_rows)
    except BulkError as e:  # read in file order: summary.rows come before the piece that failed
        raise InputError(rows_in_file(str(e), summary.rows)) from None
    except TableError as e:
        raise InputError(f"{path}: {e}") from None
    summary.seconds = time.monotonic() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    environment = settings_module.read_environment()
    prefix_default = settings_module.variables()["FEATURE_STORE_PREFIX"].default
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="a CSV or Parquet file")
    parser.add_argument("--id-column", default="transaction_id")
    parser.add_argument(
        "--row-ids",
        action="store_true",
        help="no id column (the published creditcard.csv): each row's number in the file is its id, 1 the first",
    )
    parser.add_argument("--ttl", type=int, help="seconds each record is kept (default: until deleted)")
    parser.add_argument("--url", default=environment.get("FEATURE_STORE_URL"), help="default: FEATURE_STORE_URL")
    parser.add_argument(
        "--prefix",
        default=environment.get("FEATURE_STORE_PREFIX") or prefix_default,
        help="default: FEATURE_STORE_PREFIX",
    )
    parser.add_argument("--rejects", type=Path, help="default: INPUT's name with .rejects.csv")
    args = parser.parse_args(argv)
    if not args.url:
        print("error: set FEATURE_STORE_URL (or --url redis://host:port/db)", file=sys.stderr)
        return 2
    if args.ttl is not None and args.ttl <= 0:
        print("error: --ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    rejects = args.rejects or args.input.with_name(args.input.name.split(".")[0] + ".rejects.csv")
    client = redis.Redis.from_url(args.url, socket_timeout=30)
    try:
        summary = load(args.input, client, args.prefix, rejects, None if args.row_ids else args.id_column, args.ttl)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except redis.RedisError as e:
        print(f"error: the feature store at {redacted(args.url)} failed: {e}", file=sys.stderr)
        return 1
    print(summary.line() + (f"; rejects in {rejects}" if summary.rejected else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
