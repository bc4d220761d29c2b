"""Labelled transactions for training and evaluation: a CSV file (creditcard.csv's columns, as
published or as a spreadsheet saved it: service/offline/csvfile.py) or a Parquet file, read by bulk
scoring's reader, its features converted and refused exactly as bulk scoring converts them, and its
label column (1 fraud, 0 genuine).

A model is trained on every row or on none: a file with a row that cannot be used stops with one
line naming the file, the first such row and what is wrong with it, and how many more there are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.core.features import FEATURES
from service.offline.errors import BulkError
from service.offline.source import Source, rows_in_file
from service.offline.tables import TableError, as_float64, read_features

LABEL = "Class"
CHUNK_ROWS = 65_536


class LabelledFileError(ValueError):
    """The file cannot be used as labelled transactions: the message is the one line shown."""


def read(path: Path, label: str = LABEL) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): the features in FEATURES order (float64) and the labels (int64, 0 or 1)."""
    try:
        source = Source(path, CHUNK_ROWS)
    except BulkError as e:
        raise LabelledFileError(str(e)) from None
    missing = [name for name in (*FEATURES, label) if name not in source.schema.names]
    if missing:
        raise LabelledFileError(f"{path}: missing columns {', '.join(missing)}")
    features: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    first_problem, problems, rows = "", 0, 0
    try:
        for batch in source.batches():
            columns, _, reasons = read_features(batch)
            y = as_float64(batch.column(label), label).to_numpy(zero_copy_only=False)
            for i in np.flatnonzero((y != 0) & (y != 1)).tolist():
                raw = batch.column(label)[i].as_py()
                wrong = f"{label} is missing" if raw is None else f"{label} must be 0 or 1, not {str(raw)[:40]!r}"
                reasons[i] = f"{reasons[i]}; {wrong}" if i in reasons else wrong
            if reasons and not first_problem:
                i = min(reasons)
                first_problem = f"row {rows + i + 1}: {reasons[i]}"
            problems += len(reasons)
            rows += batch.num_rows
            if not problems:
                features.append(np.column_stack(columns))
                labels.append(y.astype(np.int64))
    except BulkError as e:  # read in file order: `rows` come before the piece that failed
        raise LabelledFileError(rows_in_file(str(e), rows)) from None
    except TableError as e:
        raise LabelledFileError(f"{path}: {e}") from None
    if problems:
        more = f" (and {problems - 1:,} more rows that cannot be used)" if problems > 1 else ""
        raise LabelledFileError(f"{path}: {first_problem}{more}")
    if not rows:
        raise LabelledFileError(f"{path}: no rows after the header")
    return np.vstack(features), np.concatenate(labels)
