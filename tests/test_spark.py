"""Bulk scoring on a real local Spark (pyspark from PyPI, Debian's Java): bit-equal to the
one-machine path. The session's start-up time is printed in the summary of the test run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import synthetic
from service.core.features import FEATURES
from service.core.settings import from_mapping
from service.offline.score_file import score_file
from service.offline.tables import Engine
from service.offline.workers import Workers

pyspark = pytest.importorskip("pyspark", reason="make test installs pyspark (the spark extra)")


@pytest.fixture(scope="module")
def transactions(tmp_path_factory) -> Path:
    """3,000 rows in several Parquet files' worth of partitions, an id first, and a few bad rows."""
    X, y = synthetic.generate(3000, seed=31)
    X[[10, 1500], FEATURES.index("V4")] = np.nan
    X[2999, FEATURES.index("Amount")] = np.inf
    columns = {"txn_id": pa.array(np.arange(len(X)) + 1000)}
    for name in reversed(FEATURES):  # another column order than the model's
        columns[name] = pa.array(X[:, FEATURES.index(name)])
    columns["Class"] = pa.array(y)
    path = tmp_path_factory.mktemp("spark-in") / "transactions.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=700)
    return path


def test_spark_scores_equal_the_one_machine_path_bit_for_bit(
    spark, small_model, transactions, tmp_path, record_property
):
    from service.offline.spark_job import score_dataframe

    record_property("spark_startup_seconds", round(spark.startup_seconds, 1))
    engine = Engine.load(from_mapping({"MODEL_PATH": str(small_model[0])}, require_api_key=False))
    workers = Workers(engine, 1)
    local = tmp_path / "local.parquet"
    summary = score_file(engine, workers, transactions, local)
    assert summary.rejected == 3
    expected = pq.read_table(local).to_pandas().set_index("txn_id").sort_index()

    df = spark.read.parquet(str(transactions)).repartition(3)
    scored = score_dataframe(df, small_model[0]).toPandas().set_index("txn_id").sort_index()
    assert len(scored) == 3000
    refused = scored[scored["reject_reason"].notna()]
    assert refused.index.tolist() == [1010, 2500, 3999]
    assert refused["probability"].isna().all()
    assert "Amount" in refused.loc[3999, "reject_reason"] and "V4" in refused.loc[1010, "reject_reason"]

    accepted = scored[scored["reject_reason"].isna()].drop(columns="reject_reason")
    assert list(accepted.columns) == list(expected.columns)
    assert np.array_equal(accepted["probability"].to_numpy(dtype=np.float64), expected["probability"].to_numpy())
    for column in ("Class", "fraud_score", "is_fraud", "ood_warning", "ood_features", "model_version"):
        assert accepted[column].tolist() == expected[column].tolist(), column
    assert expected["is_fraud"].sum() > 0


def test_spark_job_entry_writes_scores_and_rejects(spark, small_model, transactions, tmp_path, monkeypatch):
    from service.offline import spark_job

    monkeypatch.setenv("MODEL_PATH", str(small_model[0]))
    monkeypatch.setenv("ENV_FILE", "/nonexistent/.env")
    out = tmp_path / "scores"
    assert spark_job.main([str(transactions), str(out)]) == 0
    scores = pq.read_table(out)
    rejects = pq.read_table(tmp_path / "scores_rejects")
    assert (scores.num_rows, rejects.num_rows) == (2997, 3)
    assert "reject_reason" not in scores.column_names and "reject_reason" in rejects.column_names
    assert sorted(rejects["txn_id"].to_pylist()) == [1010, 2500, 3999]


@pytest.mark.parametrize("content", [None, b"not parquet"], ids=["missing", "not-parquet"])
def test_spark_job_stops_on_an_unreadable_input_with_one_line(spark, small_model, tmp_path, monkeypatch, content):
    from service.offline import spark_job

    monkeypatch.setenv("MODEL_PATH", str(small_model[0]))
    monkeypatch.setenv("ENV_FILE", "/nonexistent/.env")
    source = tmp_path / "in.parquet"
    if content is not None:
        source.write_bytes(content)
    with pytest.raises(SystemExit) as stopped:
        spark_job.main([str(source), str(tmp_path / "scores")])
    message = str(stopped.value.code)
    assert message.startswith(f"spark_job: cannot read {source}: ") and "\n" not in message, message
    assert not (tmp_path / "scores").exists()
