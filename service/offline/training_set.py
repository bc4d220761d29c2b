"""`make training-set`: the next model's training table, from what production scored and the labels
known at a cut-off.

    python -m service.offline.training_set --from 2026-01-01 --to 2026-03-31 --as-of 2026-08-01 [--output F]

From the prediction log's rows scored from FROM to TO (their `date` partitions only): the features
exactly as scored (Time, V1..V28, Amount), one row per transaction id (the latest scoring of a
transaction that was retried; rows without an id are kept as they are, and counted), each with the
label known at AS_OF (only labels ingested by then: a backtest cannot see the future), `Class` 1 for
fraud and 0 otherwise, and `sample_weight` (1 / the chance the row had to be logged).

A row is kept only when its labelling window (`outcomes.WINDOW_DAYS` after it was scored, the window
the outcomes' maturity counts) has closed by AS_OF; the others are dropped and counted as immature.
A row of a closed window without a label is legitimate: a chargeback that has not come in by then
never will (the chargeback convention). A row without a transaction id can never be labelled, so it
counts as legitimate too.

Writes the table as Parquet and, beside it (the same name, .json), the log range, the cut-off and
the counts, and prints them. All of it is DuckDB SQL over the Parquet files."""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service.core.features import FEATURES
from service.core.settings import offline_or_exit
from service.offline import log_table

if TYPE_CHECKING:
    import duckdb

LABEL = "Class"  # the label column's name in creditcard.csv, so the table is also a labelled file
WEIGHT = "sample_weight"
DEFAULT_OUTPUT_DIR = Path(".run/training-sets")
MEMORY_LIMIT = "1GB"  # DuckDB's working memory; beyond it, its temporary files


class TrainingSetError(ValueError):
    """The training table cannot be had: the message is the one line shown."""


def label_window() -> dt.timedelta:
    """How long after a transaction its label can still arrive (a chargeback: up to 120 days): a
    row younger than this at the cut-off may yet be labelled fraud, so it is not used. The outcomes'
    maturity counts the same window."""
    from service.offline.outcomes import WINDOW_DAYS  # DuckDB's module: see connect()

    return dt.timedelta(days=WINDOW_DAYS)


def parse_instant(text: str) -> dt.datetime:
    """An ISO date (00:00 UTC) or timestamp (UTC unless it says otherwise), as an aware datetime."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or timestamp: {text!r}") from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {text!r}") from None


def connect() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose clock is UTC, as the label table's."""
    # Imported here: DuckDB is not in the production image, whose build runs the trainer (and so
    # reads this module's arguments) on synthetic data.
    from service.offline import labels

    con = labels.connect()
    # DuckDB's default takes 80 % of the machine's memory; within a fixed share it spills its join and
    # sort to a private directory instead, so a log of any length is read in bounded memory.
    spill = tempfile.mkdtemp(prefix="training-set-")
    atexit.register(shutil.rmtree, spill, ignore_errors=True)
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute(f"SET temp_directory = '{spill}'")
    return con


def build(
    con: duckdb.DuckDBPyConnection,
    log_dir: Path,
    labels_dir: Path,
    first: dt.date | None,
    last: dt.date | None,
    as_of: dt.datetime,
    window: dt.timedelta | None = None,
) -> tuple[duckdb.DuckDBPyRelation, dict[str, Any]]:
    """(the training table, its metadata with the counts). window: how long after a transaction its
    label can still arrive (default label_window()). Raises log_table.LogError when the log has no
    file in the range."""
    from service.offline import labels

    window = window or label_window()
    mature_by = as_of - window
    log_table.relation(con, log_dir, first, last).create_view("scored")
    known = labels.labels_as_of(con, labels_dir, as_of)
    con.execute("DROP VIEW IF EXISTS known_labels")
    known.create_view("known_labels")
    features = ", ".join(f's."{name}"' for name in FEATURES)
    # The latest scoring of each transaction id: a retry's answer is the one the caller acted on.
    # Chosen on the keys alone, then joined back, so that memory grows with the ids, not the rows'
    # forty columns (a window function over `scored` would hold them all).
    con.execute(
        """CREATE OR REPLACE TEMP VIEW latest AS
        WITH winners AS (
            SELECT transaction_id, max({'ts': ts, 'ts_ns': ts_ns, 'request_id': request_id, 'row': "row"}) AS k
            FROM scored WHERE transaction_id IS NOT NULL GROUP BY transaction_id)
        SELECT s.* FROM scored s JOIN winners w
            ON s.transaction_id = w.transaction_id AND s.ts = w.k.ts AND s.ts_ns IS NOT DISTINCT FROM w.k.ts_ns
               AND s.request_id IS NOT DISTINCT FROM w.k.request_id AND s."row" IS NOT DISTINCT FROM w.k."row"
        UNION ALL BY NAME
        SELECT * FROM scored WHERE transaction_id IS NULL"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW training AS
        SELECT s.transaction_id, s.ts, s.model_version, coalesce(s.{WEIGHT}, 1.0) AS {WEIGHT}, {features},
               coalesce(k.is_fraud, false)::INTEGER AS {LABEL},
               k.transaction_id IS NOT NULL AS labelled, k.known_at AS label_known_at
        FROM latest s LEFT JOIN known_labels k ON s.transaction_id = k.transaction_id
        WHERE s.ts <= {labels.sql_instant(mature_by)}"""
    )
    scored, without_id, distinct_ids = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE transaction_id IS NULL), count(DISTINCT transaction_id) FROM scored"
    ).fetchall()[0]
    (immature,) = con.execute(f"SELECT count(*) FROM latest WHERE ts > {labels.sql_instant(mature_by)}").fetchall()[0]
    rows, frauds, labelled_legitimate, weighted, weighted_frauds, first_ts, last_ts = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE {LABEL} = 1), count(*) FILTER (WHERE labelled AND {LABEL} = 0),
                   coalesce(sum({WEIGHT}), 0), coalesce(sum({WEIGHT}) FILTER (WHERE {LABEL} = 1), 0), min(ts), max(ts)
            FROM training"""
    ).fetchall()[0]
    metadata = {
        "log_dir": str(log_dir),
        "labels_dir": str(labels_dir),
        "from": first.isoformat() if first else None,
        "to": last.isoformat() if last else None,
        "as_of": as_of.isoformat(),
        "label_window_days": window / dt.timedelta(days=1),
        "mature_by": mature_by.isoformat(),
        "first_scored": first_ts.isoformat() if first_ts else None,
        "last_scored": last_ts.isoformat() if last_ts else None,
        "counts": {
            "scored": scored,
            "without_transaction_id": without_id,
            "retries_dropped": scored - without_id - distinct_ids,
            "immature_dropped": immature,
            "rows": rows,
            "frauds": frauds,
            "labelled_legitimate": labelled_legitimate,
            "unlabelled_legitimate": rows - frauds - labelled_legitimate,
            "weighted_rows": weighted,
            "weighted_frauds": weighted_frauds,
        },
    }
    table = con.table("training").order("ts, transaction_id")
    return table, metadata


def write(table: duckdb.DuckDBPyRelation, metadata: dict[str, Any], output: Path) -> None:
    """The table as zstd Parquet and its metadata beside it (.json), each under a temporary name
    renamed into place, so a reader never sees half a file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    table.write_parquet(str(temporary), compression="zstd")
    os.replace(temporary, output)
    sidecar = metadata_path(output)
    temporary = sidecar.with_name(f".{sidecar.name}.tmp")
    temporary.write_text(json.dumps({**metadata, "output": str(output)}, indent=2) + "\n")
    os.replace(temporary, sidecar)


def metadata_path(output: Path) -> Path:
    return output.with_suffix(".json")


def read_metadata(output: Path) -> dict[str, Any]:
    """A training table's metadata, written beside it by `write`."""
    return json.loads(metadata_path(output).read_text())


def load(con: duckdb.DuckDBPyConnection, source: Path, args: argparse.Namespace) -> tuple[pa.Table, dict[str, Any]]:
    """A training table and its metadata, from a file `make training-set` wrote or built now from
    the log directory `source` with add_window_arguments' values. A window given with a file must
    be the one it was built for. Raises TrainingSetError."""
    if Path(source).is_dir():
        as_of = args.as_of or dt.datetime.now(dt.UTC)
        log_dir, labels_dir = resolve_directories(args, source)
        try:
            table, metadata = build(con, log_dir, labels_dir, args.first, args.last, as_of)
        except log_table.LogError as e:
            raise TrainingSetError(str(e)) from None
        return table.to_arrow_table(), metadata
    try:
        metadata = read_metadata(source)
        table = pq.read_table(source)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise TrainingSetError(f"{source}: not a training set written by make training-set ({e})") from None
    asked = {"from": args.first, "to": args.last, "as_of": args.as_of}
    for key, value in asked.items():
        if value is not None and value.isoformat() != metadata[key]:
            raise TrainingSetError(f"{source} was built with {key} {metadata[key]}, not {value.isoformat()}")
    return table, metadata


def arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, sample weights) of a training table: the features in FEATURES order (float64)."""
    X = np.column_stack([table.column(name).to_numpy() for name in FEATURES]).astype(np.float64)
    return X, table.column(LABEL).to_numpy().astype(np.int64), table.column(WEIGHT).to_numpy().astype(np.float64)


def describe(metadata: dict[str, Any]) -> str:
    c = metadata["counts"]
    return (
        f"log {metadata['log_dir']} from {metadata['from'] or 'the start'} to {metadata['to'] or 'the end'}, "
        f"labels known at {metadata['as_of']} (windows of {metadata['label_window_days']:g} days closed by "
        f"{metadata['mature_by']}): {c['scored']:,} rows scored, {c['retries_dropped']:,} retries dropped, "
        f"{c['without_transaction_id']:,} without a transaction id, {c['immature_dropped']:,} dropped as immature; "
        f"{c['rows']:,} rows kept ({c['weighted_rows']:,.1f} weighted): {c['frauds']:,} fraud, "
        f"{c['labelled_legitimate']:,} labelled legitimate, {c['unlabelled_legitimate']:,} unlabelled (legitimate)"
    )


def default_output(first: dt.date | None, last: dt.date | None, as_of: dt.datetime) -> Path:
    return DEFAULT_OUTPUT_DIR / f"training-{first or 'start'}-{last or 'end'}-as-of-{as_of:%Y%m%dT%H%M%SZ}.parquet"


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """--from, --to, --as-of and where the label table is: what a training table is built from
    (shared by the trainer and the evaluation, which name the log themselves)."""
    parser.add_argument("--from", dest="first", type=parse_date, help="first scoring date (YYYY-MM-DD), inclusive")
    parser.add_argument("--to", dest="last", type=parse_date, help="last scoring date (YYYY-MM-DD), inclusive")
    parser.add_argument(
        "--as-of",
        type=parse_instant,
        help="the label cut-off: only labels ingested by then (ISO date = 00:00 UTC, or a timestamp; default now)",
    )
    parser.add_argument("--labels-dir", type=Path, help="the label table (default: LABELS_DIR)")
    parser.add_argument(
        "--default-labels-dir", type=Path, help="the label table when neither --labels-dir nor LABELS_DIR names one"
    )


def resolve_directories(args: argparse.Namespace, log_dir: Path | None) -> tuple[Path, Path]:
    """The log's and the label table's directories: as given, else from the settings, else the
    defaults given; one line and exit 2 when the log is not there."""
    settings = offline_or_exit()
    log_dir = log_dir or settings.prediction_log_dir or getattr(args, "default_dir", None)
    labels_dir = args.labels_dir or settings.labels_dir or args.default_labels_dir
    if log_dir is None or not Path(log_dir).is_dir():
        print(f"error: no prediction log at {log_dir}: set PREDICTION_LOG_DIR or pass --dir", file=sys.stderr)
        sys.exit(2)
    if labels_dir is None:
        print("error: no label table: set LABELS_DIR or pass --labels-dir", file=sys.stderr)
        sys.exit(2)
    return Path(log_dir), Path(labels_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_window_arguments(parser)
    parser.add_argument("--dir", type=Path, help="the prediction log (default: PREDICTION_LOG_DIR)")
    parser.add_argument("--default-dir", type=Path, help="the log when neither --dir nor PREDICTION_LOG_DIR names one")
    parser.add_argument("--output", type=Path, help=f"the Parquet file (default under {DEFAULT_OUTPUT_DIR}/)")
    args = parser.parse_args(argv)
    as_of = args.as_of or dt.datetime.now(dt.UTC)
    if args.first and args.last and args.first > args.last:
        parser.error("--from is after --to")
    log_dir, labels_dir = resolve_directories(args, args.dir)
    output = args.output or default_output(args.first, args.last, as_of)
    con = connect()
    try:
        table, metadata = build(con, log_dir, labels_dir, args.first, args.last, as_of)
    except log_table.LogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(table, metadata, output)
    print(describe(metadata))
    print(f"training set: {output.resolve()}")
    print(f"metadata: {metadata_path(output).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
