"""Re-scores the prediction log's features with the model version that answered and checks that the
probabilities are the logged ones, bit for bit (the champion's, and the challenger's where logged).

    python -m service.offline.verify_log [--dir DIR] [--from 2026-01-31] [--to 2026-02-01] [--model PATH ...]

The models are the one at MODEL_PATH, CHALLENGER_MODEL_PATH's, and any named with --model; rows of
a version none of them is are counted as skipped. Exits 1 when a row mismatches."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from service.core.artifacts import ArtifactError
from service.core.features import FEATURES
from service.core.settings import ConfigError, Settings, from_mapping, read_environment
from service.engine.loader import LoadedModel, load_model


@dataclasses.dataclass
class Verified:
    checked: int = 0
    mismatched: int = 0
    skipped: int = 0
    challenger_checked: int = 0
    challenger_mismatched: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)


def models(settings: Settings, paths: list[Path]) -> dict[str, LoadedModel]:
    """The models named, by version (a path with nothing there is left out)."""
    found = {}
    for path in [settings.model_path, settings.challenger_model_path, *paths]:
        if path is None:
            continue
        try:
            model = load_model(dataclasses.replace(settings, model_path=path, model_version=None, model_sha256=None))
        except ArtifactError as e:
            print(f"not used: {path}: {e}", file=sys.stderr)
            continue
        found[model.version] = model
    return found


def batches(directory: Path, first: str | None, last: str | None) -> Iterator[pa.RecordBatch]:
    dataset = ds.dataset(directory, format="parquet", partitioning="hive", exclude_invalid_files=True)
    where = None
    date = ds.field("date").cast(pa.string())
    if first:
        where = date >= first
    if last:
        where = (date <= last) if where is None else where & (date <= last)
    columns = ["model_version", "probability", "challenger_version", "challenger_probability", "request_id", "row"]
    yield from dataset.to_batches(columns=[*columns, *FEATURES], filter=where)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype("<f8").view("<u8") == b.astype("<f8").view("<u8")


def verify(
    directory: Path, by_version: dict[str, LoadedModel], first: str | None = None, last: str | None = None
) -> Verified:
    result = Verified()
    for batch in batches(directory, first, last):
        table = pa.Table.from_batches([batch])
        X = np.column_stack([table.column(name).to_numpy() for name in FEATURES]) if len(table) else None
        if X is None:
            continue
        versions = table.column("model_version").to_numpy(zero_copy_only=False)
        probability = table.column("probability").to_numpy()
        challenger_versions = table.column("challenger_version").to_numpy(zero_copy_only=False)
        challenger_probability = table.column("challenger_probability").to_numpy(zero_copy_only=False)
        for version in set(versions.tolist()):
            rows = versions == version
            model = by_version.get(version)
            if model is None:
                result.skipped += int(rows.sum())
                continue
            same = _same(model.scorer.predict_rows(np.ascontiguousarray(X[rows])), probability[rows])
            result.checked += int(rows.sum())
            result.mismatched += int((~same).sum())
            for i in np.flatnonzero(~same)[:3].tolist():
                ids = table.column("request_id").to_pylist()
                result.examples.append(f"request {ids[np.flatnonzero(rows)[i]]}: {version} differs")
        for version in {v for v in challenger_versions.tolist() if v is not None}:
            rows = challenger_versions == version
            model = by_version.get(version)
            if model is None:
                continue
            logged = challenger_probability[rows].astype(np.float64)
            same = _same(model.scorer.predict_rows(np.ascontiguousarray(X[rows])), logged)
            result.challenger_checked += int(rows.sum())
            result.challenger_mismatched += int((~same).sum())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="the log's directory (default: PREDICTION_LOG_DIR)")
    parser.add_argument(
        "--default-dir", type=Path, help="the directory when neither --dir nor PREDICTION_LOG_DIR names one"
    )
    parser.add_argument("--from", dest="first", help="first date (YYYY-MM-DD), inclusive")
    parser.add_argument("--to", dest="last", help="last date (YYYY-MM-DD), inclusive")
    parser.add_argument("--model", type=Path, action="append", default=[], help="another model version's file")
    args = parser.parse_args(argv)
    try:
        settings = from_mapping(read_environment(), require_api_key=False)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    directory = args.dir or settings.prediction_log_dir or args.default_dir
    if directory is None or not Path(directory).is_dir():
        sys.exit(f"no prediction log at {directory}: set PREDICTION_LOG_DIR or pass --dir")
    result = verify(Path(directory), models(settings, args.model), args.first, args.last)
    print(
        f"checked {result.checked} rows, mismatched {result.mismatched}, skipped {result.skipped} (no model file "
        f"for their version); challenger: checked {result.challenger_checked}, "
        f"mismatched {result.challenger_mismatched}"
    )
    for line in result.examples[:10]:
        print(line)
    return 1 if result.mismatched or result.challenger_mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
