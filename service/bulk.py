"""Bulk scoring on one machine: a CSV or Parquet file of transactions in, scores out.

    python -m service.bulk IN OUT [--rejects PATH] [--workers N] [--chunk-rows N] [--explain]

The model is the service's: MODEL_PATH (and MODEL_SHA256, MODEL_VERSION, FRAUD_THRESHOLD, OOD_Z)
from the environment or `.env`, verified and memory-mapped by the service's loader. The file is
read in chunks, so memory stays bounded whatever its size. The chunks are scored by worker
processes forked after the model is loaded: they all read the one memory-mapped artifact (the
page cache's pages), none holds a copy. Rows that cannot be scored go to the rejects file with
their row number and the reason; a missing feature column or an unreadable file stops the run
with one line."""

from __future__ import annotations

import argparse
import collections
import csv
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service import settings as settings_module
from service.artifacts import ArtifactError
from service.features import FEATURES
from service.tables import Engine, TableError, missing_features, output_fields

CHUNK_ROWS = 65_536
PARQUET = (".parquet", ".pq")


class BulkError(Exception):
    """The run cannot go on (unreadable input, missing columns, unwritable output): one line."""


@dataclass
class Summary:
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    fraud: int = 0
    ood: int = 0
    seconds: float = 0.0
    output: str = ""
    rejects: str = ""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"scored {self.scored:,} of {self.rows:,} rows in {self.seconds:.1f} s ({self.rows_per_second:,.0f} rows/s): "
            f"{self.fraud:,} fraud, {self.ood:,} out of distribution -> {self.output}; "
            f"{self.rejected:,} rejected -> {self.rejects}"
        )


# --- input -----------------------------------------------------------------------------------


class Source:
    """A file's columns and its record batches; progress as a fraction when it can be known."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self.path = path
        self.total_rows: int | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        try:
            if path.suffix.lower() in PARQUET:
                self._parquet = pq.ParquetFile(path)
                self.schema = self._parquet.schema_arrow
                self.total_rows = self._parquet.metadata.num_rows
                self._batches = self._parquet.iter_batches(batch_size=chunk_rows)
            else:
                names = self._csv_header(path)
                self.schema = pa.schema([pa.field(name, pa.string()) for name in names])
                self._file = open(path, "rb")
                self._size = os.fstat(self._file.fileno()).st_size
                # Every column is read as text: features are converted (and refused) row by row,
                # and the other columns pass through exactly as written.
                self._reader = pacsv.open_csv(
                    self._file,
                    read_options=pacsv.ReadOptions(block_size=max(1 << 20, chunk_rows * 256)),
                    convert_options=pacsv.ConvertOptions(
                        column_types={name: pa.string() for name in names},
                        strings_can_be_null=True,
                        null_values=[""],
                        quoted_strings_can_be_null=False,
                    ),
                )
                self._batches = iter(self._reader)
        except (OSError, pa.ArrowException, csv.Error, UnicodeDecodeError) as e:
            self.close()
            raise BulkError(f"cannot read {path}: {_reason(e)}") from None

    @staticmethod
    def _csv_header(path: Path) -> list[str]:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise BulkError(f"cannot read {path}: the file is empty (a header line with the column names is needed)")
        if len(set(header)) != len(header):
            raise BulkError(f"cannot read {path}: the header names a column twice")
        return header

    def batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = next(self._batches)
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as e:
                raise BulkError(f"cannot read {self.path}: {_reason(e)}") from None
            if batch.num_rows:
                yield batch

    def fraction_read(self, rows_done: int) -> float | None:
        if self.total_rows:
            return rows_done / self.total_rows
        if self._file and self._size:
            return min(1.0, self._file.tell() / self._size)
        return None

    def close(self) -> None:
        if self._file:
            self._file.close()


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(text.split())[:300]


# --- output ----------------------------------------------------------------------------------


class Sink:
    """Parquet or CSV by the output's extension; written beside it and renamed into place at the
    end, so a failed run leaves no half-written file under the output's name."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema = path, schema
        self._tmp = path.with_name(f".{path.name}.partial")
        try:
            if path.suffix.lower() in PARQUET:
                self._writer: Any = pq.ParquetWriter(self._tmp, schema)
            else:
                self._writer = pacsv.CSVWriter(str(self._tmp), schema)
        except (OSError, pa.ArrowException) as e:
            raise BulkError(f"cannot write {path}: {_reason(e)}") from None

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def commit(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)


class Rejects:
    """row (1-based, the header not counted), reason: one line a refused row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = open(path, "w", newline="")
        except OSError as e:
            raise BulkError(f"cannot write {path}: {e.strerror}") from None
        self._csv = csv.writer(self._file)
        self._csv.writerow(["row", "reason"])

    def write(self, first_row: int, reasons: dict[int, str]) -> None:
        self._csv.writerows([first_row + i, reason] for i, reason in sorted(reasons.items()))

    def close(self) -> None:
        self._file.close()


class Progress:
    """Rows, rows per second and an ETA on one terminal line, a few times a second; nothing when
    stderr is not a terminal."""

    def __init__(self, source: Source, enabled: bool) -> None:
        self.source, self.enabled = source, enabled
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, rows: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._shown < 0.25):
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-9)
        text = f"\r{rows:>14,} rows  {rows / elapsed:>10,.0f} rows/s"
        fraction = self.source.fraction_read(rows)
        if fraction:
            eta = elapsed * (1 - fraction) / fraction
            text += f"  {100 * fraction:5.1f} %  ETA {int(eta) // 60:d}:{int(eta) % 60:02d}"
        sys.stderr.write(text + ("\n" if final else ""))
        sys.stderr.flush()


# --- scoring in worker processes -------------------------------------------------------------

_engine: Engine | None = None  # set in the parent before the workers fork: they inherit the mapping


def _score_chunk(
    batch: pa.RecordBatch, explain: bool, with_features: bool
) -> tuple[Any, list[pa.Array], dict[int, str]]:
    assert _engine is not None
    features = batch.select(list(FEATURES))  # only what scoring reads crosses to the worker
    return _engine.score_batch(features, explain, with_features)


def mapped_artifact() -> dict[str, int]:
    """This process's view of the memory-mapped serving artifact, from /proc/self/smaps (kB):
    file-backed and shared, with no private copy of its pages."""
    assert _engine is not None
    path = str(getattr(_engine.model.scorer, "arrays", {}).get("nodes").filename)
    totals = {"Rss": 0, "Pss": 0, "Private_Dirty": 0, "Anonymous": 0, "mappings": 0}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" not in fields[0]:
                inside = fields[-1] == path
                totals["mappings"] += inside
            elif inside and fields[0].rstrip(":") in totals:
                totals[fields[0].rstrip(":")] += int(fields[1])
    return {"pid": os.getpid(), **totals}


class Workers:
    """Processes forked after the model is loaded, each scoring whole chunks; results come back in
    input order, with at most a few chunks in flight, so memory stays bounded. One worker scores
    in this process."""

    def __init__(self, engine: Engine, count: int) -> None:
        global _engine
        _engine = engine
        self.count = count
        self._pool = multiprocessing.get_context("fork").Pool(count) if count > 1 else None

    def map(
        self, chunks: Iterator[tuple[int, pa.RecordBatch]], explain: bool, with_features: bool
    ) -> Iterator[tuple[tuple[int, pa.RecordBatch], Any]]:
        """((first row, batch), its result) in input order."""
        if self._pool is None:
            for chunk in chunks:
                yield chunk, _score_chunk(chunk[1], explain, with_features)
            return
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append((chunk, self._pool.apply_async(_score_chunk, (chunk[1], explain, with_features))))
            if len(pending) >= 2 * self.count:
                chunk0, result = pending.popleft()
                yield chunk0, result.get()
        while pending:
            chunk0, result = pending.popleft()
            yield chunk0, result.get()

    def mappings(self) -> list[dict[str, int]]:
        if self._pool is None:
            return [mapped_artifact()]
        return [self._pool.apply_async(mapped_artifact).get() for _ in range(self.count * 4)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


def run(
    engine: Engine,
    workers: Workers,
    input_path: Path,
    output_path: Path,
    rejects_path: Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
    explain: bool = False,
    with_features: bool = False,
    progress: bool = False,
) -> Summary:
    """Scores every row of input_path into output_path; refused rows go to rejects_path. The
    output holds the input's other columns (an id, a label) as they were, optionally the features,
    then the score columns."""
    rejects_path = rejects_path or output_path.with_name(output_path.name + ".rejects.csv")
    if explain and not engine.can_explain:
        raise BulkError("--explain needs a tree model; this model is served through sklearn")
    if output_path.suffix.lower() not in (*PARQUET, ".csv"):
        raise BulkError(f"{output_path}: the output must end in .parquet, .pq or .csv")
    started = time.monotonic()
    summary = Summary(output=str(output_path), rejects=str(rejects_path))
    source = Source(input_path, chunk_rows)
    try:
        missing = missing_features(source.schema.names)
        if missing:
            raise BulkError(
                f"{input_path} lacks the feature column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(needed: {', '.join(FEATURES)}, in any order)"
            )
        extras = [field for field in source.schema if field.name not in FEATURES]
        features = [pa.field(name, pa.float64()) for name in FEATURES] if with_features else []
        rejects = Rejects(rejects_path)
        sink = Sink(output_path, pa.schema(extras + features + output_fields(explain)))
        bar = Progress(source, progress)
        try:
            for (first_row, batch), (ok, scores, reasons) in workers.map(_numbered(source), explain, with_features):
                kept = [batch.column(field.name) for field in extras]
                if reasons:
                    mask = pa.array(ok)
                    kept = [column.filter(mask) for column in kept]
                    rejects.write(first_row, reasons)
                sink.write(pa.RecordBatch.from_arrays(kept + scores, schema=sink.schema))
                summary.rows += batch.num_rows
                summary.scored += batch.num_rows - len(reasons)
                summary.rejected += len(reasons)
                summary.fraud += pc.sum(scores[len(features) + 2]).as_py() or 0
                summary.ood += pc.sum(scores[len(features) + 3]).as_py() or 0
                bar.update(summary.rows)
            bar.update(summary.rows, final=True)
        except BaseException:
            sink.abort()
            rejects.close()
            rejects.path.unlink(missing_ok=True)  # partial, like the output: neither is left behind
            raise
        rejects.close()
        sink.commit()
    except TableError as e:
        raise BulkError(f"{input_path}: {e}") from None
    finally:
        source.close()
    summary.seconds = time.monotonic() - started
    return summary


def _numbered(source: Source) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Each chunk with the number of its first row (1-based, the header not counted)."""
    first = 1
    for batch in source.batches():
        yield first, batch
        first += batch.num_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.bulk",
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
        summary = run(
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
