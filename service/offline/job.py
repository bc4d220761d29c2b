"""One bulk run as its scoring processes see it, and one batch of it scored."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.offline.source import Source
from service.offline.tables import Engine, output_fields


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
