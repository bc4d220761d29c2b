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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

UTC = dt.UTC
FIGURES = ("rows", "labelled", "frauds", "alerts", "recall", "precision", "alert_rate", "cost_per_1000")


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
        spark.read.option("mergeSchema", "true")
        .parquet(labels_dir)
        .where(F.col("ingested").cast("string") <= as_of.strftime("%Y-%m-%d"))
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

    log = spark.read.option("mergeSchema", "true").parquet(log_dir)
    return log.where(F.col("date").between(F.lit(first), F.lit(last)))


def _iso_week(date: str) -> Column:
    """'2026-W49': the ISO year and week of a date. The log's `date` partition is its rows' UTC
    date, so this holds whatever the session's time zone."""
    from pyspark.sql import functions as F

    return F.format_string("%04d-W%02d", F.expr(f"extract(YEAROFWEEK FROM {date})"), F.weekofyear(date))


def outcomes(log: DataFrame, labels: DataFrame, review_cost: float) -> DataFrame:
    """The figures per role (champion; challenger on the rows where one was logged), model version
    and ISO week of scoring (FIGURES): rows weighted by sample_weight; labelled and frauds among
    them; alerts (the decision logged at the threshold in force); recall and precision on the
    labelled rows; the alert rate on all rows; cost per 1,000 labelled rows (a missed fraud costs
    its Amount, an alert review_cost). Unlabelled rows count in rows and the alert rate only."""
    from pyspark.sql import functions as F

    joined = log.join(labels.select("transaction_id", F.col("is_fraud").alias("_fraud")), "transaction_id", "left")
    week = joined.withColumn("week", _iso_week("date"))
    champion = week.select(
        F.lit("champion").alias("role"),
        "model_version",
        "week",
        "sample_weight",
        "_fraud",
        F.col("is_fraud").alias("_alert"),
        "Amount",
    )
    challenger = week.where(F.col("challenger_version").isNotNull()).select(
        F.lit("challenger").alias("role"),
        F.col("challenger_version").alias("model_version"),
        "week",
        "sample_weight",
        "_fraud",
        F.col("challenger_is_fraud").alias("_alert"),
        "Amount",
    )
    w = F.col("sample_weight")
    labelled = F.col("_fraud").isNotNull()
    fraud = F.coalesce(F.col("_fraud"), F.lit(False))
    alert = F.coalesce(F.col("_alert"), F.lit(False))

    def weighted(condition: Column, value: Column | None = None) -> Column:
        return F.sum(F.when(condition, w * (value if value is not None else F.lit(1.0))).otherwise(0.0))

    sums = (
        champion.unionByName(challenger)
        .groupBy("role", "model_version", "week")
        .agg(
            F.sum(w).alias("rows"),
            weighted(labelled).alias("labelled"),
            weighted(labelled & fraud).alias("frauds"),
            weighted(alert).alias("alerts"),
            weighted(labelled & alert).alias("labelled_alerts"),
            weighted(labelled & fraud & alert).alias("caught"),
            weighted(labelled & fraud & ~alert, F.col("Amount")).alias("missed_amount"),
        )
    )

    def ratio(top: str, bottom: str) -> Column:
        return F.when(F.col(bottom) > 0, F.col(top) / F.col(bottom))

    return sums.select(
        "role",
        "model_version",
        "week",
        "rows",
        "labelled",
        "frauds",
        "alerts",
        ratio("caught", "frauds").alias("recall"),
        ratio("caught", "labelled_alerts").alias("precision"),
        ratio("alerts", "rows").alias("alert_rate"),
        F.when(
            F.col("labelled") > 0,
            (F.col("missed_amount") + F.lit(float(review_cost)) * F.col("labelled_alerts"))
            / F.col("labelled")
            * 1000.0,
        ).alias("cost_per_1000"),
    ).orderBy("role", "model_version", "week")


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
    parser.add_argument("--review-cost", type=float, default=5.0, help="the cost of one alert's review")
    parser.add_argument("--output", help="write the figures as JSON here too")
    args = parser.parse_args(argv)

    # Run locally (`python -m service.offline.spark_outcomes`), Spark's Python workers use this Python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.appName("fraud-scoring-outcomes").config("spark.sql.session.timeZone", "UTC").getOrCreate()
    )
    as_of = args.as_of or dt.datetime.now(UTC)
    rows = [
        r.asDict()
        for r in outcomes(
            read_log(spark, args.log_dir, args.first, args.last),
            labels_as_of(spark, args.labels_dir, as_of),
            args.review_cost,
        ).collect()
    ]
    for r in rows:
        figures = " ".join(f"{k} {r[k]:.4g}" if r[k] is not None else f"{k} -" for k in FIGURES)
        print(f"{r['role']:10} {r['model_version']:20} {r['week']}  {figures}")
    if args.output:
        with open(args.output, "w") as out:
            json.dump({"from": str(args.first), "to": str(args.last), "as_of": as_of.isoformat(), "weeks": rows}, out)
        print(f"figures -> {args.output}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
