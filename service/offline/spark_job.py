"""Bulk scoring on Spark, for tables that outgrow one machine: the one-machine engine
(service.offline.tables) in every executor.

    spark-submit service/offline/spark_job.py IN OUT [--rejects PATH] [--explain] [--shared-storage]
    python -m service.offline.spark_job IN OUT …        # the same, with a local Spark

IN and OUT are Parquet paths Spark can read and write (local, HDFS, S3…). The model is the one
MODEL_PATH names on the driver, verified there by the service's loader; its serving artifact and
manifest are shipped to the executors once (SparkContext.addFile), or read where they are when
`--shared-storage` says every executor sees MODEL_PATH. Each executor Python process verifies the
artifact's SHA-256 against the driver's and memory-maps it once (a module-level cache keyed by the
digest). pyspark is imported only here: the service never needs it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from service.core import settings as settings_module
from service.core.artifacts import ArtifactError, ArtifactPaths
from service.core.features import FEATURES
from service.core.settings import Settings
from service.offline.tables import Engine, TableError, missing_features, output_fields

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

REJECT_REASON = "reject_reason"
_engines: dict[str, Engine] = {}  # one per artifact digest in each executor Python process


def _spark_type(field: pa.Field) -> str:
    return {pa.float64(): "double", pa.int32(): "int", pa.bool_(): "boolean", pa.string(): "string"}[field.type]


def _executor_engine(settings: Settings, digest: str, shipped: bool) -> Engine:
    """The engine for this artifact, loaded once per executor process: the service's loader
    verifies the artifact against its manifest, and the digest must be the driver's."""
    engine = _engines.get(digest)
    if engine is None:
        if shipped:
            from pyspark import SparkFiles

            settings = dataclasses.replace(
                settings, model_path=Path(SparkFiles.getRootDirectory()) / settings.model_path.name, model_sha256=None
            )
        engine = Engine.load(settings)
        if engine.model.forest_sha256 != digest:
            raise ArtifactError(
                f"the executor's model artifact has SHA-256 {engine.model.forest_sha256}, the driver's {digest}"
            )
        _engines[digest] = engine
    return engine


def _scorer(settings: Settings, digest: str, shipped: bool, extras: list[str], explain: bool):
    fields = output_fields(explain)

    def score(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        engine = _executor_engine(settings, digest, shipped)
        nullable = {pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype(), pa.string(): pd.StringDtype()}
        for frame in frames:
            batch = pa.RecordBatch.from_pandas(frame[list(FEATURES)], preserve_index=False)
            ok, scores, reasons = engine.score_batch(batch, explain)
            if reasons:  # refused rows stay, with null scores and the reason
                index = pa.array(np.where(ok, ok.cumsum() - 1, 0), mask=~ok)
                scores = [column.take(index) for column in scores]
            reason = pa.array([reasons.get(i) for i in range(len(frame))], pa.string())
            out = pa.RecordBatch.from_arrays([*scores, reason], names=[f.name for f in fields] + [REJECT_REASON])
            scored = out.to_pandas(types_mapper=nullable.get)
            yield pd.concat([frame[extras].reset_index(drop=True), scored], axis=1)

    return score


def score_dataframe(
    df: DataFrame, model_path: str | Path | None = None, explain: bool = False, shared_storage: bool = False
) -> DataFrame:
    """`df` with the service's output columns appended (probability, fraud_score, is_fraud,
    ood_warning, ood_features, model_version, reasons with explain) and `reject_reason`: null
    when the row was scored, else why not (its scores are then null). The 30 feature columns
    are read (in any order) and not repeated; every other column is kept.

    The model is MODEL_PATH from the environment or `.env` unless model_path is given, with the
    service's threshold and out-of-distribution settings."""
    settings = settings_module.from_mapping(settings_module.read_environment(), require_api_key=False)
    if model_path is not None:
        settings = dataclasses.replace(settings, model_path=Path(model_path))
    engine = Engine.load(settings)  # verified on the driver: refuse before any executor starts
    digest = engine.model.forest_sha256
    if digest is None:
        raise ArtifactError(f"{settings.model_path} has no serving artifact (a tree forest); Spark scoring needs one")
    missing = missing_features(df.columns)
    if missing:
        raise TableError(f"the DataFrame lacks the feature columns {', '.join(missing)}")
    if not shared_storage:
        paths = ArtifactPaths.for_model(settings.model_path)
        context = df.sparkSession.sparkContext
        for path in (paths.forest, paths.manifest):
            context.addFile(str(path.resolve()))
    extras = [name for name in df.columns if name not in FEATURES]
    schema = ", ".join(
        [f"`{f.name}` {f.dataType.simpleString()}" for f in df.schema.fields if f.name in extras]
        + [f"`{f.name}` {_spark_type(f)}" for f in output_fields(explain)]
        + [f"`{REJECT_REASON}` string"]
    )
    return df.mapInPandas(_scorer(settings, digest, not shared_storage, extras, explain), schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spark-submit service/offline/spark_job.py",
        description="Score a Parquet table on Spark with the service's model.",
    )
    parser.add_argument("input", help="Parquet input (a file or a directory of parts)")
    parser.add_argument("output", help="Parquet output directory (replaced)")
    parser.add_argument("--rejects", help="Parquet directory for refused rows (default OUTPUT_rejects)")
    parser.add_argument("--explain", action="store_true", help="add the service's reasons (JSON) to every row")
    parser.add_argument("--shared-storage", action="store_true", help="executors read MODEL_PATH where it is")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    # Run locally (`python -m service.offline.spark_job`), Spark's Python workers use this Python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from py4j.protocol import Py4JJavaError
    from pyspark import StorageLevel
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession, functions

    spark = SparkSession.builder.appName("fraud-scoring-bulk").getOrCreate()
    try:
        table = spark.read.parquet(args.input)
    except (PySparkException, Py4JJavaError) as e:  # a missing path; a file that is not Parquet
        sys.exit(f"spark_job: cannot read {args.input}: {_first_line(e)}")
    try:
        scored = score_dataframe(table, explain=args.explain, shared_storage=args.shared_storage).persist(
            StorageLevel.MEMORY_AND_DISK
        )
    except settings_module.ConfigError as e:
        sys.exit(f"config error: {e}")
    except (ArtifactError, TableError) as e:
        sys.exit(f"model error: {e}" if isinstance(e, ArtifactError) else f"spark_job: {args.input}: {e}")
    scored.filter(functions.col(REJECT_REASON).isNull()).drop(REJECT_REASON).write.mode("overwrite").parquet(
        args.output
    )
    rejected = scored.filter(functions.col(REJECT_REASON).isNotNull())
    rejects = args.rejects or args.output.rstrip("/") + "_rejects"
    rejected.select(*[c for c in scored.columns if c == REJECT_REASON or c not in _output_names()]).write.mode(
        "overwrite"
    ).parquet(rejects)
    total, refused = scored.count(), rejected.count()
    print(f"scored {total - refused:,} of {total:,} rows -> {args.output}; {refused:,} rejected -> {rejects}")
    scored.unpersist()
    return 0


def _first_line(error: Exception) -> str:
    """Spark's own message, without the JVM's stack: its first line."""
    java = getattr(error, "java_exception", None)
    text = str(java.getMessage()) if java is not None else str(error)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)


def _output_names() -> set[str]:
    return {f.name for f in output_fields(True)}


if __name__ == "__main__":
    sys.exit(main())
