"""`make features IN=…`: load transactions' features into the online feature store.

    python -m service.feature_writer transactions.parquet [--id-column transaction_id] [--ttl 86400]

Reads CSV or Parquet (an id column and the 30 feature columns, in any order; other columns are
ignored) in chunks, validates every row exactly as `POST /v1/fraud-score` validates a posted
transaction, and writes each valid row's record (service/feature_record.py) under
FEATURE_STORE_PREFIX + id with pipelined SETs, one round trip per chunk. Rows that fail go to a
rejects file (CSV: row number, id, reason) and are counted; a missing column or an unreadable file
stops at once with one line."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import redis
from tqdm import tqdm

from service import settings as settings_module
from service.feature_record import encode_record
from service.feature_store import redacted
from service.features import FEATURES
from service.schema import TransactionValidator, load_schema_document

CHUNK_ROWS = 5000


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


def read_batches(path: Path, id_column: str) -> tuple[Iterator[pa.RecordBatch], int | None]:
    """Batches with the id and the features as read (any type), and the row count if known."""
    columns = [id_column, *FEATURES]
    try:
        if path.suffix.lower() == ".parquet":
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            _check_columns(path, names, columns)
            return parquet.iter_batches(batch_size=CHUNK_ROWS, columns=columns), parquet.metadata.num_rows
        _check_columns(path, pa_csv.open_csv(path).schema.names, columns)
        # Every CSV column is read as text, so that one bad value rejects its row, not the file.
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=1 << 20),
            convert_options=pa_csv.ConvertOptions(
                include_columns=columns, column_types=dict.fromkeys(columns, pa.string()), strings_can_be_null=True
            ),
        )
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    return iter(reader), None


def _check_columns(path: Path, names: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise InputError(f"{path}: missing columns {', '.join(missing)}")


def _values(column: pa.Array) -> list[Any]:
    """A feature column as Python values: floats where the text is a number, else the text (the
    validator then says what is wrong with it), None where the cell is empty."""
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        return column.to_pylist()
    try:
        return pc.cast(column, pa.float64()).to_pylist()
    except pa.ArrowInvalid:
        return [_number_or_text(v) for v in column.to_pylist()]


def _number_or_text(text: str | None) -> float | str | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def transactions(batch: pa.RecordBatch, id_column: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(id, transaction) per row, the transaction as the JSON object the contract validates."""
    ids = batch.column(id_column).cast(pa.string()).to_pylist()
    columns = [_values(batch.column(name)) for name in FEATURES]
    for i, transaction_id in enumerate(ids):
        yield (
            transaction_id,
            {name: values[i] for name, values in zip(FEATURES, columns, strict=True) if values[i] is not None},
        )


def load(
    path: Path,
    client: redis.Redis,
    prefix: str,
    rejects: Path,
    id_column: str = "transaction_id",
    ttl: int | None = None,
    progress: bool | None = None,
) -> Summary:
    validator = TransactionValidator(load_schema_document())
    batches, total = read_batches(path, id_column)
    summary = Summary()
    started = time.monotonic()
    show = sys.stderr.isatty() if progress is None else progress
    with (
        open(rejects, "w", newline="") as rejected,
        tqdm(total=total, unit=" rows", unit_scale=True, disable=not show, desc="features") as bar,
    ):
        out = csv.writer(rejected)
        out.writerow(["row", id_column, "reason"])
        for batch in batches:
            pipe = client.pipeline(transaction=False)
            for transaction_id, transaction in transactions(batch, id_column):
                summary.rows += 1
                if not transaction_id:
                    reason = f"{id_column} is empty"
                elif validator.is_valid(transaction):
                    pipe.set(prefix + transaction_id, encode_record([transaction[f] for f in FEATURES]), ex=ttl)
                    continue
                else:
                    reason = "; ".join(v.describe() for v in validator.violations(transaction))
                summary.rejected += 1
                out.writerow([summary.rows, transaction_id, reason])
            summary.written += len(pipe)
            pipe.execute()
            bar.update(batch.num_rows)
    summary.seconds = time.monotonic() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    environment = settings_module.read_environment()
    prefix_default = settings_module.variables()["FEATURE_STORE_PREFIX"].default
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="a CSV or Parquet file")
    parser.add_argument("--id-column", default="transaction_id")
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
        summary = load(args.input, client, args.prefix, rejects, args.id_column, args.ttl)
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
