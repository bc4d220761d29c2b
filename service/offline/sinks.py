"""The files a bulk run writes: the scored rows (Parquet or CSV) and the refused rows, each written
beside its path and renamed into place only when the run succeeds."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.offline.errors import BulkError, reason
from service.offline.source import PARQUET


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
            raise BulkError(f"cannot write {path}: {reason(e)}") from None

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
