"""The label table: what became known about a transaction after it was scored (a chargeback, a
confirmed case, a cleared review), appended by `make labels IN=file.csv|file.parquet`.

    python -m service.offline.labels IN [--dir LABELS_DIR] [--rejects FILE] [--ingested-at ISO]

The table is Parquet under LABELS_DIR, append-only: each run writes one new file
`ingested=YYYY-MM-DD/part-<ingest ns>-<uuid>.parquet` (LABEL_SCHEMA) and never rewrites one. A later
label for a transaction supersedes an earlier one from its ingestion on: `labels_as_of` is the one
place that says which label was known at a given instant, and every reader (the outcomes report,
the training set) asks it, so that a backtest as of a date sees only what was ingested by then.

The input's columns: transaction_id, label (1/0, fraud/legitimate; true/false from a Parquet bool),
known_at (an ISO date, meaning 00:00 UTC, or an ISO timestamp; without an offset it is UTC), and
optionally source (chargeback, case, review) and amount; other columns are ignored. A row that
cannot be a label goes to the rejects file (row, reason; the row counts data rows from 1) and the
others are appended. Within one file a transaction named twice keeps its latest known_at."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv

from service.core.settings import offline_or_exit
from service.offline.errors import BulkError
from service.offline.source import Source
from service.predlog.compactor import write_atomically

UTC = dt.UTC
TIMESTAMP = pa.timestamp("us", tz="UTC")
LABEL_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("known_at", TIMESTAMP, nullable=False),
        pa.field("ingested_at", TIMESTAMP, nullable=False),
        pa.field("source", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)
REQUIRED = ("transaction_id", "label", "known_at")
OPTIONAL = ("source", "amount")
FRAUD = ("1", "fraud", "true")
LEGITIMATE = ("0", "legitimate", "false")
SOURCES = ("chargeback", "case", "review")
PARTITION = "ingested"
CHUNK_ROWS = 65_536


class LabelsError(ValueError):
    """The input cannot be read as labels: the message is the one line shown."""


def connect() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose clock is UTC: a timestamp without an offset, or a date, is UTC."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sql_instant(when: dt.datetime) -> str:
    """A SQL TIMESTAMPTZ literal of an instant (a naive datetime is UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return f"TIMESTAMPTZ {sql_string(when.astimezone(UTC).isoformat())}"


def read_input(path: Path) -> pa.Table:
    """The file's columns as a table: a CSV through the project's one reader (every column text), a
    Parquet file as typed."""
    try:
        source = Source(path, CHUNK_ROWS)
        table = pa.Table.from_batches(list(source.batches()), schema=source.schema)
    except BulkError as e:
        raise LabelsError(str(e)) from None
    missing = [name for name in REQUIRED if name not in table.column_names]
    if missing:
        raise LabelsError(f"{path}: missing columns {', '.join(missing)} (needed: {', '.join(REQUIRED)})")
    if table.num_rows == 0:
        raise LabelsError(f"{path}: no rows after the header")
    return table


def _values(options: tuple[str, ...]) -> str:
    return ", ".join(sql_string(v) for v in options)


def parse(con: duckdb.DuckDBPyConnection, table: pa.Table, ingested_at: dt.datetime) -> tuple[pa.Table, pa.Table]:
    """(labels in LABEL_SCHEMA, one row per transaction id; rejects: row, reason)."""
    present = {name: name in table.column_names for name in OPTIONAL}
    columns = [*REQUIRED, *(name for name in OPTIONAL if present[name])]
    con.register("labels_input", table.select(columns))
    source = "lower(trim(CAST(source AS VARCHAR)))" if present["source"] else "NULL::VARCHAR"
    amount = "CAST(amount AS VARCHAR)" if present["amount"] else "NULL::VARCHAR"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE labels_parsed AS
        SELECT
            row_number() OVER () AS row,
            nullif(trim(CAST(transaction_id AS VARCHAR)), '') AS transaction_id,
            lower(trim(CAST(label AS VARCHAR))) AS label_text,
            CASE WHEN label_text IN ({_values(FRAUD)}) THEN true
                 WHEN label_text IN ({_values(LEGITIMATE)}) THEN false END AS is_fraud,
            CAST(known_at AS VARCHAR) AS known_at_text,
            TRY_CAST(known_at_text AS TIMESTAMPTZ) AS known_at,
            nullif({source}, '') AS source,
            nullif(trim({amount}), '') AS amount_text,
            TRY_CAST(amount_text AS DOUBLE) AS amount
        FROM labels_input
    """)
    ingested = sql_instant(ingested_at)
    reason = f"""CASE
        WHEN transaction_id IS NULL THEN 'missing transaction_id'
        WHEN label_text IS NULL THEN 'missing label'
        WHEN is_fraud IS NULL THEN 'unknown label ' || label_text || ' (1/0 or fraud/legitimate)'
        WHEN known_at_text IS NULL OR trim(known_at_text) = '' THEN 'missing known_at'
        WHEN known_at IS NULL THEN 'known_at ' || known_at_text || ' is not an ISO date or timestamp'
        WHEN known_at > {ingested} THEN 'known_at ' || known_at_text || ' is after the ingestion time'
        WHEN source IS NOT NULL AND source NOT IN ({_values(SOURCES)})
            THEN 'unknown source ' || source || ' (chargeback, case or review)'
        WHEN amount_text IS NOT NULL AND (amount IS NULL OR NOT isfinite(amount))
            THEN 'amount ' || amount_text || ' is not a number'
    END"""
    rejects = con.sql(f"SELECT row, left({reason}, 300) AS reason FROM labels_parsed WHERE ({reason}) IS NOT NULL")
    rejects = rejects.order("row").to_arrow_table()
    labels = con.sql(f"""
        SELECT transaction_id, is_fraud, known_at, {ingested} AS ingested_at, source, amount
        FROM labels_parsed WHERE ({reason}) IS NULL
        QUALIFY row_number() OVER (PARTITION BY transaction_id ORDER BY known_at DESC, row DESC) = 1
        ORDER BY transaction_id
    """).to_arrow_table()
    con.unregister("labels_input")
    return labels.cast(LABEL_SCHEMA), rejects


def label_file(labels_dir: Path, ingested_at: dt.datetime) -> Path:
    """Where a run ingested at ingested_at writes: a name no other run has."""
    ns = int(ingested_at.timestamp()) * 1_000_000_000 + ingested_at.microsecond * 1000
    day = ingested_at.astimezone(UTC).strftime("%Y-%m-%d")
    return labels_dir / f"{PARTITION}={day}" / f"part-{ns}-{uuid.uuid4().hex}.parquet"


def append(labels: pa.Table, labels_dir: Path, ingested_at: dt.datetime) -> Path:
    """Writes the run's labels as one new file (temporary name, fsync, rename): a reader sees the
    whole file or none of it."""
    target = label_file(labels_dir, ingested_at)
    write_atomically(labels.cast(LABEL_SCHEMA), target)
    return target


def _files(directory: Path, pattern: str) -> str | None:
    """A read_parquet glob over the directory's Parquet files, or None when there are none."""
    if not directory.is_dir() or next(directory.glob(pattern), None) is None:
        return None
    return sql_string(str(directory / pattern))


def labels_as_of(con: duckdb.DuckDBPyConnection, labels_dir: Path, as_of: dt.datetime) -> duckdb.DuckDBPyRelation:
    """The label known at as_of, one row per transaction id (LABEL_SCHEMA's columns): among a
    transaction's labels ingested at or before as_of, the one with the greatest (ingested_at,
    known_at), a fraud label winning an exact tie. Labels ingested later are not seen: only the
    partitions up to as_of's day are read."""
    names = ", ".join(LABEL_SCHEMA.names)
    files = _files(Path(labels_dir), f"{PARTITION}=*/*.parquet")
    if files is None:
        con.register("labels_none", LABEL_SCHEMA.empty_table())
        return con.sql(f"SELECT {names} FROM labels_none")
    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    day = sql_string(as_of.astimezone(UTC).strftime("%Y-%m-%d"))
    return con.sql(f"""
        SELECT {names}
        FROM read_parquet({files}, hive_partitioning = true, union_by_name = true,
                          hive_types = {{'{PARTITION}': VARCHAR}})
        WHERE {PARTITION} <= {day} AND ingested_at <= {sql_instant(as_of)}
        QUALIFY row_number() OVER (
            PARTITION BY transaction_id ORDER BY ingested_at DESC, known_at DESC, is_fraud DESC) = 1
    """)


def unseen_by_log(con: duckdb.DuckDBPyConnection, labels: pa.Table, log_dir: Path) -> int | None:
    """How many of the labels' transaction ids the prediction log has never seen (None: no log)."""
    files = _files(Path(log_dir), "date=*/hour=*/*.parquet")
    if files is None:
        return None
    con.register("labels_new", labels.select(["transaction_id"]))
    ((count,),) = con.execute(f"""
        SELECT count(*) FROM labels_new
        WHERE transaction_id NOT IN (
            SELECT transaction_id FROM read_parquet({files}, hive_partitioning = true, union_by_name = true)
            WHERE transaction_id IS NOT NULL)
    """).fetchall()
    con.unregister("labels_new")
    return int(count)


def write_rejects(rejects: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    pacsv.write_csv(rejects, temporary)
    temporary.replace(path)


def instant_argument(text: str) -> dt.datetime:
    """An ISO date or timestamp from the command line, UTC unless it says otherwise."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or timestamp") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="a CSV or Parquet file of labels")
    parser.add_argument("--dir", type=Path, help="the label table's directory (default: LABELS_DIR)")
    parser.add_argument("--default-dir", type=Path, help="the directory when neither --dir nor LABELS_DIR names one")
    parser.add_argument("--log-dir", type=Path, help="the prediction log (default: PREDICTION_LOG_DIR)")
    parser.add_argument("--default-log-dir", type=Path, help="the log when neither names one")
    parser.add_argument("--rejects", type=Path, help="the rejects file (default: beside the input, IN.rejects.csv)")
    parser.add_argument(
        "--ingested-at",
        type=instant_argument,
        help="the ingestion time recorded (default: now; for backfills and tests)",
    )
    args = parser.parse_args(argv)
    settings = offline_or_exit()
    labels_dir = args.dir or settings.labels_dir or args.default_dir
    if labels_dir is None:
        print("no label table: set LABELS_DIR or pass --dir", file=sys.stderr)
        return 2
    ingested_at = args.ingested_at or dt.datetime.fromtimestamp(time.time_ns() // 1000 / 1e6, UTC)
    con = connect()
    try:
        table = read_input(args.input)
        labels, rejects = parse(con, table, ingested_at)
    except LabelsError as e:
        print(f"cannot ingest labels: {e}", file=sys.stderr)
        return 2
    rejects_path = args.rejects or args.input.with_name(f"{args.input.name}.rejects.csv")
    write_rejects(rejects, rejects_path)
    written = append(labels, Path(labels_dir), ingested_at) if labels.num_rows else None
    read = table.num_rows
    print(
        f"read {read}, appended {labels.num_rows}, rejected {rejects.num_rows} ({rejects_path}), "
        f"superseded within the file {read - labels.num_rows - rejects.num_rows}"
    )
    log_dir = args.log_dir or settings.prediction_log_dir or args.default_log_dir
    unseen = unseen_by_log(con, labels, log_dir) if log_dir is not None else None
    if unseen is not None:
        print(f"never seen by the prediction log ({log_dir}): {unseen} of {labels.num_rows}")
    print(f"label table: {written if written else 'nothing appended'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
