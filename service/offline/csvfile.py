"""The CSV files of transactions, read one way by every command that takes one: training and
evaluation (through service/offline/labelled.py), bulk scoring and the feature writer (through
bulk scoring's Source).

The published creditcard.csv quotes its header names and its `Class` ("0", "1") and writes `Time`
as an integer on many rows; a spreadsheet that saves it adds a UTF-8 byte-order mark and CRLF line
ends. Arrow's CSV reader takes quoted fields and CRLF as they are, and every column is read as
text: each value is then converted (or refused, with its reason) by the one conversion of
service/offline/tables.py, whichever command reads it."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv


class HeaderError(ValueError):
    """The header line cannot name the columns: the message says why."""


def header(path: Path) -> list[str]:
    """The column names of the file's first line, quotes removed; a byte-order mark is not part
    of the first name."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        names = next(csv.reader(f), None)
    if not names:
        raise HeaderError("the file is empty (a header line with the column names is needed)")
    if len(set(names)) != len(names):
        raise HeaderError("the header names a column twice")
    return names


def as_text(names: list[str]) -> pacsv.ConvertOptions:
    """Every column read as text, an empty field as missing: features are converted (and refused)
    row by row, and the other columns pass through exactly as written."""
    return pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        strings_can_be_null=True,
        null_values=[""],
        quoted_strings_can_be_null=False,
    )


def parse(data: bytes, names: list[str], convert: pacsv.ConvertOptions, block_size: int) -> pa.Table:
    """Whole lines of the file after its header, as a table of text columns named names."""
    options = pacsv.ReadOptions(column_names=names, block_size=block_size, use_threads=False)
    return pacsv.read_csv(pa.py_buffer(data), read_options=options, convert_options=convert)
