"""The prediction log as a DuckDB relation over a range of dates: only the partitions of those dates
are read.

DuckDB's `union_by_name` (files of every schema version read as one table) reads every file's
footer before a filter on the `date` partition can prune any, so a glob over the whole log would
open every file ever written, and stop at the first unreadable one. The files are therefore chosen
by their `date=YYYY-MM-DD` directory first; the same range is also the query's filter."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

PARTITION = "date="


class LogError(ValueError):
    """The log cannot be read for that range: the message is the one line shown."""


def dates(log_dir: Path) -> list[dt.date]:
    """The dates the log has a partition for, in order (directories not named date=YYYY-MM-DD are
    not the log's: the spool, a stray file)."""
    found = []
    for child in Path(log_dir).glob(f"{PARTITION}*"):
        try:
            found.append(dt.date.fromisoformat(child.name.removeprefix(PARTITION)))
        except ValueError:
            continue
    return sorted(found)


def files(log_dir: Path, first: dt.date | None, last: dt.date | None) -> list[str]:
    """The Parquet files of the partitions from first to last (inclusive; None: unbounded)."""
    chosen = [d for d in dates(log_dir) if (first is None or d >= first) and (last is None or d <= last)]
    found: list[str] = []
    for day in chosen:
        # *.parquet only: the compactor writes under a temporary name and renames into place.
        found += sorted(str(p) for p in (Path(log_dir) / f"{PARTITION}{day.isoformat()}").glob("hour=*/*.parquet"))
    return found


def relation(
    con: duckdb.DuckDBPyConnection, log_dir: Path, first: dt.date | None, last: dt.date | None
) -> duckdb.DuckDBPyRelation:
    """The log's rows scored from first to last (by the `date` partition, UTC), every column."""
    chosen = files(log_dir, first, last)
    if not chosen:
        span = f"from {first or 'the start'} to {last or 'the end'}"
        raise LogError(f"no prediction log files {span} under {log_dir}")
    where = " and ".join(
        [
            *([f"date >= DATE '{first.isoformat()}'"] if first else []),
            *([f"date <= DATE '{last.isoformat()}'"] if last else []),
        ]
    )
    scan = con.read_parquet(chosen, hive_partitioning=True, union_by_name=True)
    return scan.filter(where) if where else scan
