"""A CSV or Parquet file's columns, read in pieces so that each scoring process reads its own."""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from service.offline import csvfile
from service.offline.errors import BulkError, reason

PARQUET = (".parquet", ".pq")


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
            raise BulkError(f"cannot read {path}: {reason(e)}") from None
        self._empty = pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in self.schema], schema=self.schema)

    def pieces(self, k: int = 0, n: int = 1) -> Iterator[tuple[pa.RecordBatch, bool, int | None]]:
        """(batch, whether it ends its piece, bytes of the file read up to it when known) for
        pieces k, k + n, ...; every piece gives at least one batch, maybe empty, so that pieces
        can be taken from the workers in turn."""
        try:
            yield from (self._parquet_pieces if self.parquet else self._csv_pieces)(k, n)
        except (OSError, pa.ArrowException) as e:
            raise BulkError(f"cannot read {self.path}: {reason(e)}") from None

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
            raise BulkError(f"cannot read {self.path}: {reason(e)}") from None

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
