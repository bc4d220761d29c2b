"""One file scored: the parent's side of a bulk run. It opens the input, takes the scored batches
from the workers in file order, writes them and the refused rows, and renames both into place
only when every row is done."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from service.core.features import FEATURES
from service.offline.errors import BulkError
from service.offline.job import Job
from service.offline.sinks import Rejects, Sink
from service.offline.source import PARQUET, Source, rows_in_file
from service.offline.tables import Engine, TableError, missing_features, output_fields
from service.offline.workers import Workers

CHUNK_ROWS = 65_536


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


class Progress:
    """Rows and rows per second on stderr (tqdm), with an ETA: a Parquet file says how many rows
    it holds; a CSV file's progress is the bytes its workers have read. Nothing when not enabled."""

    def __init__(self, source: Source, enabled: bool) -> None:
        self._by_rows = source.total_rows is not None
        total, unit = (source.total_rows, " rows") if self._by_rows else (source.size, "B")
        self._bar = tqdm(total=total, unit=unit, unit_scale=True, disable=not enabled, desc="scored")
        self._rows = 0

    def advance(self, rows: int, position: int | None) -> None:
        self._rows += rows
        if self._by_rows:
            self._bar.update(rows)
        elif position is not None and position > self._bar.n:
            self._bar.set_postfix_str(f"{self._rows:,} rows", refresh=False)
            self._bar.update(position - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def score_file(
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
    first_row = 1  # of the next batch: 1-based, the header not counted
    try:
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
            bar.advance(scored.rows, position)
    except BaseException as e:
        sink.abort()
        rejects.abort()
        if isinstance(e, TableError):
            raise BulkError(f"{input_path}: {e}") from None
        if isinstance(e, BulkError):  # pieces come in file order: first_row starts the one that failed
            raise BulkError(rows_in_file(str(e), first_row - 1)) from None
        raise
    finally:
        bar.close()
    try:
        sink.commit()
    except BaseException:
        rejects.abort()
        raise
    rejects.commit()
    summary.seconds = time.monotonic() - started
    return summary
