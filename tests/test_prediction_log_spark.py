"""Spark reads the prediction log (no extra jars, local[2] as the bulk job's test): its partitions,
and files of an older schema version beside the current one."""

from __future__ import annotations

import numpy as np

from service.core.features import N_FEATURES
from service.predlog import compactor
from service.predlog.record import SCHEMA_VERSION
from tests.test_prediction_log import ISSUE_COLUMNS, log_rows, make_log, old_version_file
from tests.test_spark import pytestmark, spark  # noqa: F401  (the local[2] session, and when it can run)


def test_spark_reads_the_log_with_its_partitions_and_every_schema_version(tmp_path, spark):  # noqa: F811
    log = make_log(tmp_path)
    log_rows(log, np.ones((30, N_FEATURES)), "new")
    log.spool.seal()
    compactor.compact(tmp_path)
    old_version_file(tmp_path)
    table = spark.read.option("mergeSchema", "true").parquet(str(tmp_path))
    counts = {r["schema_version"]: r["count"] for r in table.groupBy("schema_version").count().collect()}
    assert counts == {0: 1, SCHEMA_VERSION: 30}
    assert {"date", "hour", "service_us", *ISSUE_COLUMNS} <= set(table.columns)
    old = table.filter("schema_version = 0").select("date", "hour", "service_us").collect()[0]
    assert (str(old["date"]), old["hour"], old["service_us"]) == ("2020-01-01", 0, None)
