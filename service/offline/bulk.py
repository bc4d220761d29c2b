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
import collections
import csv
import itertools
import logging
import mmap
import multiprocessing
import multiprocessing.queues
import os
import queue
import re
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.core import settings as settings_module
from service.core.artifacts import ArtifactError
from service.core.features import FEATURES
from service.offline import csvfile
from service.offline.tables import Engine, Features, TableError, as_float64, missing_features, output_fields

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
    """A file's columns, read in pieces: worker k of n reads pieces k, k + n, k + 2n, ... itself,
    so no process reads the whole file and no rows cross between processes. A CSV piece is a
    range of whole lines (about chunk_rows of them); a Parquet piece is a row group, or, when the
    file has fewer row groups than workers, one chunk of its rows."""

    SAMPLE_BYTES = 1 << 20  # read once to size the CSV pieces by the file's own line length
    CSV_BLOCK_BYTES = 1 << 20  # Arrow's blocks for a CSV piece (see _parse)

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self.path, self.chunk_rows = path, chunk_rows
        self.total_rows: int | None = None
        self.parquet = path.suffix.lower() in PARQUET
        try:
            self.size = os.stat(path).st_size
            if self.parquet:
                metadata = pq.ParquetFile(path)
                self.schema = metadata.schema_arrow
                self.total_rows = metadata.metadata.num_rows
                self.row_groups = metadata.metadata.num_row_groups
            else:
                names = csvfile.header(path)
                self.schema = pa.schema([pa.field(name, pa.string()) for name in names])
                self._convert = csvfile.as_text(names)
                with open(path, "rb") as f:
                    head = f.read(self.SAMPLE_BYTES)
                    self._data_start = _after_first_line(head)
                    f.seek(self._data_start)
                    sample = f.read(self.SAMPLE_BYTES)
                line_bytes = len(sample) / max(1, sample.count(b"\n"))
                self._piece_bytes = max(1, int(line_bytes * chunk_rows))
        except (OSError, pa.ArrowException, csv.Error, UnicodeDecodeError, csvfile.HeaderError) as e:
            raise BulkError(f"cannot read {path}: {_reason(e)}") from None
        self._empty = pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in self.schema], schema=self.schema)

    def pieces(self, k: int = 0, n: int = 1) -> Iterator[tuple[pa.RecordBatch, bool, int | None]]:
        """(batch, whether it ends its piece, bytes of the file read up to it when known) for
        pieces k, k + n, ...; every piece gives at least one batch, maybe empty, so that pieces
        can be taken from the workers in turn."""
        try:
            yield from (self._parquet_pieces if self.parquet else self._csv_pieces)(k, n)
        except (OSError, pa.ArrowException) as e:
            raise BulkError(f"cannot read {self.path}: {_reason(e)}") from None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every non-empty batch in file order, in this process."""
        for batch, _, _ in self.pieces():
            if batch.num_rows:
                yield batch

    def chunks(self, names: list[str]) -> Iterator[pa.RecordBatch]:
        """A Parquet file's named columns, chunk_rows rows at a time, in file order."""
        try:
            yield from self._parquet().iter_batches(batch_size=self.chunk_rows, columns=names, use_threads=False)
        except (OSError, pa.ArrowException) as e:
            raise BulkError(f"cannot read {self.path}: {_reason(e)}") from None

    def _parquet(self) -> pq.ParquetFile:
        # This process's own file handle; pages are streamed through a small buffer rather than
        # whole column chunks read ahead, so memory stays bounded however large a row group is.
        return pq.ParquetFile(self.path, pre_buffer=False, buffer_size=1 << 20)

    def _parquet_pieces(self, k: int, n: int) -> Iterator[tuple[pa.RecordBatch, bool, int | None]]:
        parquet = self._parquet()
        if self.row_groups >= n:
            for group in range(k, self.row_groups, n):
                batches = parquet.iter_batches(batch_size=self.chunk_rows, row_groups=[group], use_threads=False)
                yield from self._last_flagged(batches, None)
        else:
            # A row group is decoded from its start only: each worker decodes the file and scores
            # every n-th chunk (decoding costs a small part of scoring).
            for i, batch in enumerate(parquet.iter_batches(batch_size=self.chunk_rows, use_threads=False)):
                if i % n == k:
                    yield batch, True, None

    def _csv_pieces(self, k: int, n: int) -> Iterator[tuple[pa.RecordBatch, bool, int | None]]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i in itertools.count(k, n):
                start = self._line_start(fd, self._data_start + i * self._piece_bytes)
                if start >= self.size:
                    return
                end = self._line_start(fd, self._data_start + (i + 1) * self._piece_bytes)
                data = os.pread(fd, end - start, start)
                if not data:
                    yield self._empty, True, end
                    continue
                yield from self._last_flagged(iter(self._parse(data).to_batches()), end)
        finally:
            os.close(fd)

    def _parse(self, data: bytes) -> pa.Table:
        """A piece of whole lines as one batch. Arrow parses it in blocks, twice as fast as in one
        block, but not a line that spans a whole block: then, or on any other error, the piece is
        parsed in one block, which raises the real error if there is one."""
        try:
            return self._read_csv(data, self.CSV_BLOCK_BYTES).combine_chunks()
        except pa.ArrowInvalid:
            return self._read_csv(data, len(data) + 1)

    def _read_csv(self, data: bytes, block_size: int) -> pa.Table:
        return csvfile.parse(data, self.schema.names, self._convert, block_size)

    def _line_start(self, fd: int, offset: int) -> int:
        """Where the first line starting at or after offset starts (the file's size if none)."""
        if offset <= self._data_start:
            return self._data_start
        position = offset - 1
        while position < self.size:
            block = os.pread(fd, 1 << 16, position)
            newline = block.find(b"\n")
            if newline >= 0:
                return position + newline + 1
            position += len(block) or self.size
        return self.size

    def _last_flagged(
        self, batches: Iterator[pa.RecordBatch], position: int | None
    ) -> Iterator[tuple[pa.RecordBatch, bool, int | None]]:
        previous = next(batches, None)
        if previous is None:
            yield self._empty, True, position
            return
        for batch in batches:
            yield previous, False, position
            previous = batch
        yield previous, True, position

    def fraction_read(self, rows_done: int, position: int | None) -> float | None:
        if self.total_rows:
            return rows_done / self.total_rows
        if position is not None and self.size:
            return min(1.0, position / self.size)
        return None


def _after_first_line(head: bytes) -> int:
    """Where the CSV's second line starts: after the header line's end (LF, CRLF or CR)."""
    ends = [i for i in (head.find(b"\n"), head.find(b"\r")) if i >= 0]
    if not ends:
        return len(head)
    end = min(ends)
    return end + (2 if head[end : end + 2] == b"\r\n" else 1)


PIECE_ROW = re.compile(r"Row #(\d+)")


def rows_in_file(message: str, rows_before: int) -> str:
    """Arrow numbers the rows of the piece it was reading from 1 (blank lines skipped): the
    file's row instead, as the rejects file numbers it."""
    return PIECE_ROW.sub(lambda m: f"row {rows_before + int(m.group(1))}", message)


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(text.split())[:300]


# --- output ----------------------------------------------------------------------------------


class Partial:
    """A file written beside its path and renamed into place by commit(), so that a failed run
    leaves no half-written file under the path, and an earlier run's file as it was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.name}.partial")

    def _close(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self._close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._close()
        finally:
            self._tmp.unlink(missing_ok=True)


class Sink(Partial):
    """Parquet or CSV by the output's extension."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        super().__init__(path)
        self.schema = schema
        try:
            if path.suffix.lower() in PARQUET:
                # Dictionaries for text columns only: trying one on a column of distinct numbers
                # (an id, the probability) costs a third of the writing and saves nothing.
                text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
                self._writer: Any = pq.ParquetWriter(self._tmp, schema, use_dictionary=text)
            else:
                self._writer = pacsv.CSVWriter(str(self._tmp), schema)
        except (OSError, pa.ArrowException) as e:
            raise BulkError(f"cannot write {path}: {_reason(e)}") from None

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _close(self) -> None:
        self._writer.close()


class Rejects(Partial):
    """row (1-based, the header not counted), reason: one line a refused row; renamed into place
    with the output, so that a failed run keeps an earlier run's output and rejects together."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._file = open(self._tmp, "w", newline="")
        except OSError as e:
            raise BulkError(f"cannot write {path}: {e.strerror}") from None
        self._csv = csv.writer(self._file)
        self._csv.writerow(["row", "reason"])

    def write(self, first_row: int, reasons: dict[int, str]) -> None:
        self._csv.writerows([first_row + i, reason] for i, reason in sorted(reasons.items()))

    def _close(self) -> None:
        self._file.close()


class Progress:
    """Rows, rows per second and an ETA on one terminal line, a few times a second; nothing when
    stderr is not a terminal."""

    def __init__(self, source: Source, enabled: bool) -> None:
        self.source, self.enabled = source, enabled
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, rows: int, position: int | None = None, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._shown < 0.25):
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-9)
        text = f"\r{rows:>14,} rows  {rows / elapsed:>10,.0f} rows/s"
        fraction = 1.0 if final else self.source.fraction_read(rows, position)
        if fraction:
            eta = elapsed * (1 - fraction) / fraction
            text += f"  {100 * fraction:5.1f} %  ETA {int(eta) // 60:d}:{int(eta) % 60:02d}"
        sys.stderr.write(text + ("\n" if final else ""))
        sys.stderr.flush()


# --- scoring in worker processes -------------------------------------------------------------


@dataclass
class Scored:
    """One batch scored: its rows, the output columns after the passed-through ones (refused rows
    left out), the refused rows' index in the batch -> reason, the counts the summary adds up, and
    the passed-through columns (every row)."""

    rows: int
    columns: list[pa.Array]
    reasons: dict[int, str]
    fraud: int
    ood: int
    extras: list[pa.Array]

    def output(self, schema: pa.Schema) -> pa.RecordBatch:
        extras = self.extras
        if self.reasons:
            kept = np.ones(self.rows, dtype=bool)
            kept[list(self.reasons)] = False
            mask = pa.array(kept)
            extras = [column.filter(mask) for column in extras]
        return pa.RecordBatch.from_arrays(extras + self.columns, schema=schema)


@dataclass(frozen=True)
class Job:
    """What every worker needs for one run; forked workers inherit it, nothing is pickled."""

    engine: Engine
    source: Source
    schema: pa.Schema  # the output's: extras, features (with_features), score columns
    extras: list[str]
    explain: bool
    with_features: bool

    def score(self, batch: pa.RecordBatch) -> Scored:
        """The batch scored, with its passed-through columns."""
        _, columns, reasons = self.engine.score_batch(batch, self.explain, self.with_features)
        return self.counted(batch.num_rows, [batch.column(name) for name in self.extras], columns, reasons)

    def counted(self, rows: int, extras: list[pa.Array], columns: list[pa.Array], reasons: dict[int, str]) -> Scored:
        is_fraud = len(columns) - len(output_fields(self.explain)) + 2  # then ood_warning
        fraud, ood = (pc.sum(column).as_py() or 0 for column in columns[is_fraud : is_fraud + 2])
        return Scored(rows, columns, reasons, fraud, ood, extras)


def mapped_artifact(engine: Engine) -> dict[str, int]:
    """This process's view of the memory-mapped serving artifact, from /proc/self/smaps (kB):
    file-backed and shared, with no private copy of its pages."""
    path = str(getattr(engine.model.scorer, "arrays", {}).get("nodes").filename)
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


def _work(job: Job, k: int, n: int, results: multiprocessing.queues.Queue) -> None:
    """Worker k of n: reads, converts and scores its own pieces, and hands back only what is
    written; last, its view of the mapped artifact."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        for batch, last, position in job.source.pieces(k, n):
            results.put(("scored", job.score(batch), last, position))
        results.put(("done", mapped_artifact(job.engine)))
    except (BulkError, TableError) as e:
        results.put(("error", type(e).__name__, str(e)))
    except BaseException:
        results.put(("error", "crash", traceback.format_exc()))


def _convert_and_walk(
    job: Job,
    k: int,
    shares: list[tuple[str, ...]],
    slots: Slots,
    tasks: multiprocessing.queues.Queue,
    results: multiprocessing.queues.Queue,
) -> None:
    """Worker k of a file decoded by columns: for each chunk the parent names, decodes its share of
    the feature columns and writes them into the chunk's slot (with its bit sets and the reasons
    of its refused values); and walks the chunks the parent gives it once every share is in."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine, mine = job.engine, shares[k]
        batches = job.source.chunks(list(mine))
        while (task := tasks.get()) is not None:
            if task[0] == "convert":
                _, chunk, slot = task
                batch = next(batches, None)
                if batch is None:  # the file's end: no rows, for this chunk and any after
                    results.put(("converted", k, chunk, 0, {}))
                    continue
                n = batch.num_rows
                features = Features.read(batch, engine.ood.low, engine.ood.high, slots.rows(slot, n), mine)
                slots.refused(slot, k, n)[:] = features.refused
                slots.outside(slot, k, n)[:] = features.outside
                results.put(("converted", k, chunk, n, features.reasons(batch)))
            else:
                _, chunk, slot, n, refused = task
                rows = slots.rows(slot, n)
                if refused:  # walk only the rows kept, moved up to the slot's start
                    kept = rows[slots.bits(slot, "refused", n) == 0]
                    rows = slots.rows(slot, len(kept))
                    rows[:] = kept
                slots.probability(slot, len(rows))[:] = engine.model.scorer.predict_rows(rows)
                results.put(("scored", k, chunk, len(rows)))
        results.put(("done", mapped_artifact(engine)))
    except (BulkError, TableError) as e:
        results.put(("error", type(e).__name__, str(e)))
    except BaseException:
        results.put(("error", "crash", traceback.format_exc()))


class Slots:
    """A ring of slots of memory shared by the parent and the workers (an anonymous shared mapping
    made before the fork), each for one chunk: the rows as the walker reads them (float32,
    row-major), each worker writing its share of the columns; each worker's bit sets of refused and
    out-of-distribution values (uint32 a row); then the probabilities (float64), written by the
    worker that walks the chunk."""

    def __init__(self, count: int, chunk_rows: int, workers: int) -> None:
        self.chunk_rows, self.workers = chunk_rows, workers
        self._layout = {"rows": 0, "probability": 4 * len(FEATURES) * chunk_rows}
        self._layout["refused"] = self._layout["probability"] + 8 * chunk_rows
        self._layout["outside"] = self._layout["refused"] + 4 * workers * chunk_rows
        size = self._layout["outside"] + 4 * workers * chunk_rows
        self.size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE  # each slot starts on a page
        self._memory = mmap.mmap(-1, count * self.size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)

    def _array(self, slot: int, part: str, dtype: type, count: int, offset: int = 0) -> np.ndarray:
        if count > self.chunk_rows * (len(FEATURES) if part == "rows" else 1):
            raise ValueError(f"{count} values do not fit in a slot of {self.chunk_rows} rows")
        start = slot * self.size + self._layout[part] + offset
        return np.frombuffer(self._memory, dtype, count, start)

    def rows(self, slot: int, n: int) -> np.ndarray:
        return self._array(slot, "rows", np.float32, n * len(FEATURES)).reshape(n, len(FEATURES))

    def probability(self, slot: int, n: int) -> np.ndarray:
        return self._array(slot, "probability", np.float64, n)

    def refused(self, slot: int, k: int, n: int) -> np.ndarray:
        return self._array(slot, "refused", np.uint32, n, 4 * k * self.chunk_rows)

    def outside(self, slot: int, k: int, n: int) -> np.ndarray:
        return self._array(slot, "outside", np.uint32, n, 4 * k * self.chunk_rows)

    def bits(self, slot: int, part: str, n: int) -> np.ndarray:
        """Every worker's bit set of the slot's rows, OR-ed: a bit a feature."""
        return np.bitwise_or.reduce(
            [self._array(slot, part, np.uint32, n, 4 * k * self.chunk_rows) for k in range(self.workers)]
        )


class Workers:
    """Scoring processes, forked for each run after the model is loaded (they inherit its
    mapping: the page cache's pages, no copy). Each reads its share of the file itself, or, for a
    Parquet file with fewer row groups than workers (a row group is decoded only from its start),
    each worker decodes a share of the feature columns of every chunk into memory shared with the
    others, and walks its turn of the chunks. The parent takes the results piece by piece in file
    order, and writes. At most two chunks a worker are under way, so memory stays bounded. One
    worker scores in this process."""

    DEPTH = 2  # batches a worker holds: one being scored, one waiting

    def __init__(self, engine: Engine, count: int) -> None:
        self.engine, self.count = engine, count
        self._context = multiprocessing.get_context("fork")
        self._running: list[multiprocessing.Process] = []
        self._mappings: list[dict[str, int]] = []

    def results(self, job: Job) -> Iterator[tuple[Scored, int | None]]:
        """(each batch scored, bytes read up to it when known), in file order."""
        if self.count == 1:
            for batch, _, position in job.source.pieces():
                yield job.score(batch), position
            self._mappings = [mapped_artifact(self.engine)]
        elif job.source.parquet and job.source.row_groups < self.count and not job.explain:
            yield from self._handed(job)
        else:
            yield from self._reading(job)

    def _reading(self, job: Job) -> Iterator[tuple[Scored, int | None]]:
        queues = [self._context.Queue(maxsize=self.DEPTH) for _ in range(self.count)]
        self._start(_work, [(job, k, self.count, queues[k]) for k in range(self.count)])
        try:
            mappings = []
            for piece in itertools.count():
                k = piece % self.count
                message = self._next(queues[k], self._running[k])
                if message[0] == "done":  # no piece here, so none after: every other worker is done too
                    mappings.append(message[1])
                    for j in range(self.count):
                        if j != k:
                            mappings.append(self._expect_done(self._next(queues[j], self._running[j])))
                    break
                while True:
                    _, scored, last, position = self._expect_scored(message)
                    yield scored, position
                    if last:
                        break
                    message = self._next(queues[k], self._running[k])
            self._mappings = mappings
        finally:
            self.close()

    def _handed(self, job: Job) -> Iterator[tuple[Scored, int | None]]:
        """Every worker decodes its share of the feature columns of each chunk into the chunk's
        slot; once all shares are in, the chunk's worker (the workers in turn) walks it. The parent
        decodes only the columns it writes out as they are, and makes the output columns from the
        slot."""
        n, ring = self.count, self.count * self.DEPTH
        slots = Slots(ring, job.source.chunk_rows, n)
        # In FEATURES order, so that a row's reasons, joined share after share, read as one pass's.
        shares = [tuple(str(name) for name in share) for share in np.array_split(np.array(FEATURES), n)]
        tasks = [self._context.Queue() for _ in range(n)]
        results = self._context.Queue()
        self._start(_convert_and_walk, [(job, k, shares, slots, tasks[k], results) for k in range(n)])
        own = job.extras + (list(FEATURES) if job.with_features else [])
        batches = job.source.chunks(own) if own else iter(())
        converted: dict[int, dict[int, tuple[int, dict[int, str]]]] = collections.defaultdict(dict)
        walked: dict[int, int] = {}
        end: int | None = None  # the first chunk past the file's end

        issued = complete = taken = 0

        def convert() -> None:
            """Names the next chunks to convert, in file order (each worker reads its batches in
            turn): while their slots are free (the chunk `ring` before taken), and no more than a
            round ahead of the chunks converted, so that a chunk's walk comes before the next
            round's conversions in its worker's tasks."""
            nonlocal issued
            while issued < min(taken + ring, complete + n):
                for k in range(n):
                    tasks[k].put(("convert", issued, issued % ring))
                issued += 1

        def take(chunk: int) -> Scored:
            parts, slot = converted.pop(chunk), chunk % ring
            rows = parts[0][0]
            reasons = {
                i: "; ".join(parts[k][1][i] for k in range(n) if i in parts[k][1])
                for i in sorted(set().union(*(part[1] for part in parts.values())))
            }
            ok = slots.bits(slot, "refused", rows) == 0 if reasons else slice(None)
            outside = slots.bits(slot, "outside", rows)[ok]
            probability = slots.probability(slot, walked.pop(chunk)).copy()  # the slot is reused next
            batch = next(batches, None)
            if own and (batch is None or batch.num_rows != rows):
                raise RuntimeError("the parent's and the workers' chunks of the file differ")
            columns = [
                pa.array(as_float64(batch.column(name), name).to_numpy(zero_copy_only=False)[ok])
                for name in (FEATURES if job.with_features else ())
            ]
            columns += self.engine.columns(probability, outside)
            return job.counted(rows, [batch.column(name) for name in job.extras], columns, reasons)

        try:
            convert()
            while end is None or taken < end:
                message = self._next(results, *self._running)
                if message[0] == "converted":
                    _, k, chunk, rows, reasons = message
                    converted[chunk][k] = (rows, reasons)
                    if len(converted[chunk]) == n:
                        complete += 1
                        if len({part[0] for part in converted[chunk].values()}) != 1:
                            raise RuntimeError("the workers' chunks of the file differ")
                        if rows == 0:
                            end = chunk if end is None else min(end, chunk)
                        else:
                            refused = any(part[1] for part in converted[chunk].values())
                            tasks[chunk % n].put(("walk", chunk, chunk % ring, rows, refused))
                else:
                    _, _, chunk, rows = self._expect_scored(message)
                    walked[chunk] = rows
                while taken in walked:
                    yield take(taken), None
                    taken += 1
                convert()
            for k in range(n):
                tasks[k].put(None)
            self._mappings = []
            while len(self._mappings) < n:
                message = self._next(results, *self._running)
                if message[0] == "done":
                    self._mappings.append(message[1])
        finally:
            self.close()

    def _start(self, target: Any, args: list[tuple]) -> None:
        # pyarrow imports pandas, when it is installed, the first time it converts anything
        # (about 0.2 s): here, once, before the fork, rather than in every worker of every run.
        pa.array([0.0])
        self._running = [self._context.Process(target=target, args=a, daemon=True) for a in args]
        for process in self._running:
            process.start()

    @staticmethod
    def _next(results: multiprocessing.queues.Queue, *processes: multiprocessing.Process) -> tuple:
        """The next message from the processes that answer on results."""
        while True:
            try:
                message = results.get(timeout=1.0)
            except queue.Empty:
                for process in processes:
                    if not process.is_alive():
                        raise BulkError(f"a scoring process stopped (exit code {process.exitcode})") from None
                continue
            if message[0] == "error":
                _, kind, text = message
                if kind == "BulkError":
                    raise BulkError(text)
                if kind == "TableError":
                    raise TableError(text)
                raise RuntimeError(f"a scoring process failed:\n{text}")
            return message

    @staticmethod
    def _expect_scored(message: tuple) -> tuple:
        if message[0] != "scored":
            raise RuntimeError(f"a scoring process answered {message[0]!r} out of turn")
        return message

    @staticmethod
    def _expect_done(message: tuple) -> dict[str, int]:
        if message[0] != "done":
            raise RuntimeError(f"a scoring process answered {message[0]!r} after the last piece")
        return message[1]

    def pids(self) -> list[int]:
        """The scoring processes of the run under way."""
        return [process.pid for process in self._running if process.pid is not None]

    def mappings(self) -> list[dict[str, int]]:
        """Each worker's view of the mapped artifact at the end of the last run."""
        return self._mappings

    def close(self) -> None:
        for process in self._running:
            if process.is_alive():
                process.terminate()
        for process in self._running:
            process.join()
        self._running = []


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
    missing = missing_features(source.schema.names)
    if missing:
        raise BulkError(
            f"{input_path} lacks the feature column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(needed: {', '.join(FEATURES)}, in any order)"
        )
    extras = [field for field in source.schema if field.name not in FEATURES]
    features = [pa.field(name, pa.float64()) for name in FEATURES] if with_features else []
    schema = pa.schema(extras + features + output_fields(explain))
    job = Job(engine, source, schema, [field.name for field in extras], explain, with_features)
    rejects = Rejects(rejects_path)
    try:
        sink = Sink(output_path, schema)
    except BaseException:
        rejects.abort()
        raise
    bar = Progress(source, progress)
    try:
        first_row = 1  # of the next batch: 1-based, the header not counted
        for scored, position in workers.results(job):
            if scored.reasons:
                rejects.write(first_row, scored.reasons)
            output = scored.output(schema)
            if output.num_rows:
                sink.write(output)
            first_row += scored.rows
            summary.rows += scored.rows
            summary.scored += scored.rows - len(scored.reasons)
            summary.rejected += len(scored.reasons)
            summary.fraud += scored.fraud
            summary.ood += scored.ood
            bar.update(summary.rows, position)
        bar.update(summary.rows, final=True)
    except BaseException as e:
        sink.abort()
        rejects.abort()
        if isinstance(e, TableError):
            raise BulkError(f"{input_path}: {e}") from None
        if isinstance(e, BulkError):  # pieces come in file order: first_row starts the one that failed
            raise BulkError(rows_in_file(str(e), first_row - 1)) from None
        raise
    try:
        sink.commit()
    except BaseException:
        rejects.abort()
        raise
    rejects.commit()
    summary.seconds = time.monotonic() - started
    return summary


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
