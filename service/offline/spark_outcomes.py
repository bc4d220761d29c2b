"""The outcomes' join and point figures on Spark, for prediction logs beyond one machine: the same
label as of a cut-off as service.offline.labels.labels_as_of, the same figures per model version and
ISO week of scoring as `make outcomes` (service.offline.outcomes), as functions over DataFrames.

    spark-submit service/offline/spark_outcomes.py LOG_DIR LABELS_DIR --from D --to D [--as-of T] [--output F.json]
    python -m service.offline.spark_outcomes …        # the same, with a local Spark

LOG_DIR and LABELS_DIR are paths Spark can read (local, HDFS, S3…): the prediction log's
date=/hour= partitions and the label table's ingested= partitions. Only the partitions in range are
read: the log's from FROM to TO, the labels' up to AS_OF's day (Spark prunes them by the partition
filters). The bootstrap intervals, the maturity and the calibration stay with the one-machine
command: they need the week's rows in one place, and a week fits one machine long after the log
does not. pyspark is imported only here: the service never needs it."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from service.core.threshold import REVIEW_COST
from service.offline.labels import LABEL_SCHEMA, PARTITION
from service.predlog.record import arrow_schema

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

UTC = dt.UTC
SPARK_TYPES = {
    pa.string(): "string",
    pa.bool_(): "boolean",
    pa.int16(): "smallint",
    pa.int32(): "int",
    pa.int64(): "bigint",
    pa.float64(): "double",
    pa.timestamp("us", tz="UTC"): "timestamp",
}
# The log's columns the outcomes read (Spark reads no other).
LOG_COLUMNS = (
    "transaction_id",
    "ts",
    "ts_ns",
    "model_version",
    "is_fraud",
    "challenger_version",
    "challenger_is_fraud",
    "sample_weight",
    "Amount",
)


def _ddl(schema: pa.Schema, partitions: str, names: tuple[str, ...] | None = None) -> str:
    """A Spark schema (DDL) of the Parquet schema's columns (those named), then the partitions'.
    Given a schema, Spark reads no file's footer to infer one: the partitions a filter prunes are
    never opened, and files of an older schema version read their missing columns as null."""
    fields = [f for f in schema if names is None or f.name in names]
    return ", ".join([*(f"`{f.name}` {SPARK_TYPES[f.type]}" for f in fields), partitions])


def _instant(when: dt.datetime) -> dt.datetime:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


def labels_as_of(spark: SparkSession, labels_dir: str, as_of: dt.datetime) -> DataFrame:
    """The label known at as_of, one row per transaction id: among a transaction's labels ingested
    at or before as_of, the one with the greatest (ingested_at, known_at), a fraud label winning an
    exact tie (labels_as_of's rule). Only the ingested= partitions up to as_of's day are read."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    as_of = _instant(as_of)
    table = (
        spark.read.schema(_ddl(LABEL_SCHEMA, f"`{PARTITION}` string"))
        .parquet(labels_dir)
        .where(F.col(PARTITION) <= as_of.strftime("%Y-%m-%d"))
        .where(F.col("ingested_at") <= F.lit(as_of))
    )
    latest = Window.partitionBy("transaction_id").orderBy(
        F.col("ingested_at").desc(), F.col("known_at").desc(), F.col("is_fraud").desc()
    )
    return (
        table.withColumn("_rank", F.row_number().over(latest))
        .where("_rank = 1")
        .select("transaction_id", "is_fraud", "known_at", "ingested_at", "source", "amount")
    )


def read_log(spark: SparkSession, log_dir: str, first: dt.date, last: dt.date) -> DataFrame:
    """The log's rows scored from first to last (inclusive, by the date partition, UTC)."""
    from pyspark.sql import functions as F

    log = spark.read.schema(_ddl(arrow_schema(), "`date` date, `hour` int", LOG_COLUMNS)).parquet(log_dir)
    return log.where(F.col("date").between(F.lit(first), F.lit(last)))


def _iso_week(date: str) -> Column:
    """'2026-W49': the ISO year and week of a date. The log's `date` partition is its rows' UTC
    date, so this holds whatever the session's time zone."""
    from pyspark.sql import functions as F

    return F.format_string("%04d-W%02d", F.expr(f"extract(YEAROFWEEK FROM {date})"), F.weekofyear(date))


def outcome_rows(log: DataFrame, labels: DataFrame) -> DataFrame:
    """One row per transaction scored (a retried one as its latest scoring; rows without an id as
    they are) with its ISO week, its weight, its label known (null: none) and the amount a missed
    fraud costs (the label's amount, else the logged Amount)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy("transaction_id").orderBy(F.col("ts").desc(), F.col("ts_ns").desc())
    scored = (
        log.withColumn("_rank", F.row_number().over(latest))
        .where(F.col("transaction_id").isNull() | (F.col("_rank") == 1))
        .select(
            "transaction_id",
            "model_version",
            _iso_week("date").alias("week"),
            F.coalesce(F.col("sample_weight"), F.lit(1.0)).alias("weight"),
            F.col("is_fraud").alias("alert"),
            "challenger_version",
            F.col("challenger_is_fraud").alias("challenger_alert"),
            F.col("Amount").alias("log_amount"),
        )
    )
    known = labels.select("transaction_id", F.col("is_fraud").alias("label"), F.col("amount").alias("label_amount"))
    return scored.join(known, "transaction_id", "left").select(
        "model_version",
        "week",
        "weight",
        "alert",
        "challenger_version",
        "challenger_alert",
        "label",
        F.coalesce("label_amount", "log_amount", F.lit(0.0)).alias("amount"),
    )


def _sums(rows: DataFrame, keys: list[str], alert: Column, review_cost: float) -> DataFrame:
    """The figures of a decision over the labelled rows, per `keys`: the weighted sums (SUMS of the
    one-machine command) and the rates made of them."""
    from pyspark.sql import functions as F

    w, label = F.col("weight"), F.col("label")

    def weighted(condition: Column, value: Column | None = None) -> Column:
        return F.coalesce(F.sum(F.when(condition, w * (value if value is not None else F.lit(1.0)))), F.lit(0.0))

    sums = (
        rows.where(label.isNotNull())
        .groupBy(*keys)
        .agg(
            F.count(F.lit(1)).alias("labelled"),
            F.sum(w).alias("weight"),
            weighted(label).alias("frauds"),
            weighted(alert).alias("alerts"),
            weighted(label & alert).alias("caught"),
            weighted(label & ~alert, F.col("amount")).alias("missed_amount"),
        )
    )

    def ratio(top: Column, bottom: str) -> Column:
        return F.when(F.col(bottom) > 0, top / F.col(bottom))

    return sums.select(
        *keys,
        "labelled",
        ratio(F.col("caught"), "frauds").alias("recall"),
        ratio(F.col("caught"), "alerts").alias("precision"),
        ratio(F.col("alerts"), "weight").alias("alert_rate"),
        ratio((F.col("missed_amount") + F.lit(float(review_cost)) * F.col("alerts")) * 1000.0, "weight").alias(
            "cost_per_1000"
        ),
    )


def outcomes(log: DataFrame, labels: DataFrame, review_cost: float) -> tuple[DataFrame, DataFrame]:
    """(weeks, challengers): the point figures of `make outcomes` (service.offline.outcomes).

    weeks: per model version and ISO week of scoring, the rows scored (a count and weighted), the
    alert rate on all of them, the labelled rows (a count and weighted) and, over the labelled rows,
    the champion's recall, precision, alert rate and cost per 1,000 rows (a missed fraud costs its
    amount, an alert review_cost). An unlabelled row is neither fraud nor legitimate.

    challengers: per model version, ISO week and challenger version, over the labelled rows where
    the challenger was logged, the same figures for the champion (`champion_…`) and the challenger
    (`challenger_…`) on those same rows."""
    from pyspark.sql import functions as F

    rows = outcome_rows(log, labels)
    keys = ["model_version", "week"]
    volumes = rows.groupBy(*keys).agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("weight").alias("rows_weighted"),
        (F.sum(F.when(F.col("alert"), F.col("weight")).otherwise(0.0)) / F.sum("weight")).alias("alert_rate_all_rows"),
        F.count("label").alias("labelled"),
        F.coalesce(F.sum(F.when(F.col("label").isNotNull(), F.col("weight"))), F.lit(0.0)).alias("labelled_weighted"),
        F.coalesce(F.sum(F.when(F.col("label"), F.col("weight"))), F.lit(0.0)).alias("frauds_weighted"),
    )
    champion = _sums(rows, keys, F.col("alert"), review_cost).drop("labelled")
    weeks = volumes.join(champion, keys, "left").orderBy(*keys)

    logged = rows.where(F.col("challenger_alert").isNotNull()).withColumn(
        "challenger_version", F.coalesce("challenger_version", F.lit(""))
    )
    pair = [*keys, "challenger_version"]
    figures = ("recall", "precision", "alert_rate", "cost_per_1000")

    def prefixed(frame: DataFrame, prefix: str) -> DataFrame:
        return frame.select(*pair, *(F.col(name).alias(f"{prefix}{name}") for name in figures), "labelled")

    ours = prefixed(_sums(logged, pair, F.col("alert"), review_cost), "champion_")
    theirs = prefixed(_sums(logged, pair, F.col("challenger_alert"), review_cost), "challenger_").drop("labelled")
    challengers = (
        ours.join(theirs, pair)
        .withColumn("cost_difference_per_1000", F.col("challenger_cost_per_1000") - F.col("champion_cost_per_1000"))
        .orderBy(*pair)
    )
    return weeks, challengers


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {text!r}") from None


def _timestamp(text: str) -> dt.datetime:
    try:
        return _instant(dt.datetime.fromisoformat(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or timestamp: {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spark-submit service/offline/spark_outcomes.py",
        description="Each model's realised figures per ISO week, from the prediction log and the label table, on Spark.",
    )
    parser.add_argument("log_dir", help="the prediction log (date=/hour= partitions)")
    parser.add_argument("labels_dir", help="the label table (ingested= partitions)")
    parser.add_argument("--from", dest="first", type=_date, required=True, help="first scoring date (UTC)")
    parser.add_argument("--to", dest="last", type=_date, required=True, help="last scoring date (UTC), inclusive")
    parser.add_argument("--as-of", type=_timestamp, help="the label cut-off (default: now)")
    parser.add_argument("--review-cost", type=float, default=REVIEW_COST, help=f"per alert (default {REVIEW_COST:g})")
    parser.add_argument("--output", help="write the figures as JSON here too")
    args = parser.parse_args(argv)

    # Run locally (`python -m service.offline.spark_outcomes`), Spark's Python workers use this Python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.appName("fraud-scoring-outcomes").config("spark.sql.session.timeZone", "UTC").getOrCreate()
    )
    as_of = args.as_of or dt.datetime.now(UTC)
    weeks, challengers = outcomes(
        read_log(spark, args.log_dir, args.first, args.last),
        labels_as_of(spark, args.labels_dir, as_of),
        args.review_cost,
    )
    figures = {
        "from": args.first.isoformat(),
        "to": args.last.isoformat(),
        "as_of": as_of.isoformat(),
        "review_cost": args.review_cost,
        "weeks": [r.asDict() for r in weeks.collect()],
        "challengers": [r.asDict() for r in challengers.collect()],
    }
    for w in figures["weeks"]:
        print(f"{w['model_version']} {w['week']}: {_line(w)}")
    for c in figures["challengers"]:
        print(f"{c['model_version']} {c['week']} challenger {c['challenger_version']}: {_line(c)}")
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1) + "\n")
        print(f"figures -> {args.output}")
    spark.stop()
    return 0


def _line(figures: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v if v is not None else '-'}"
        for k, v in figures.items()
        if k not in ("model_version", "week", "challenger_version")
    )


if __name__ == "__main__":
    sys.exit(main())
