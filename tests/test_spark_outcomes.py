"""The outcomes on Spark (service/offline/spark_outcomes.py, local[2]) against the one-machine
command's DuckDB (service/offline/labels.py's labels_as_of, service/offline/outcomes.py), on the same
generated log (perf/outcomes_log.py) and label table: the same label as of every cut-off, the same
point figures. Files that are not Parquet sit in partitions outside the window: Spark must not open
them (partition pruning), or the test fails."""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from perf.outcomes_log import Traffic, write
from service.offline import labels as labels_module
from service.offline import outcomes as outcomes_module

pytest.importorskip("pyspark", reason="make test installs pyspark (the spark extra)")

from service.offline import spark_outcomes  # noqa: E402  (after the skip: it needs pyarrow only, but its callers Spark)

UTC = dt.UTC
TRAFFIC = Traffic(
    rows=4_000,
    weeks=2,
    end=dt.date(2026, 12, 7),
    seed=11,
    fraud_rate=0.05,  # enough frauds in 4,000 rows for every week's recall to mean something
    sampled_days=(3, 6),
    labels_until=dt.date(2027, 6, 1),
)
FIRST, LAST = TRAFFIC.start, TRAFFIC.end - dt.timedelta(days=1)
FIRST_INGESTION = dt.datetime(2027, 1, 15, tzinfo=UTC)  # the labels known by then
CORRECTIONS = dt.datetime(2027, 2, 20, tzinfo=UTC)  # some of those frauds found legitimate after all
SECOND_INGESTION = dt.datetime(2027, 6, 1, tzinfo=UTC)  # every label after
AS_OF = (
    FIRST_INGESTION,
    dt.datetime(2027, 3, 1, 12, tzinfo=UTC),
    dt.datetime(2027, 7, 1, tzinfo=UTC),
)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """(log_dir, labels_dir) of a generated log and its labels ingested in three runs, with
    garbage outside every window a test reads."""
    root = tmp_path_factory.mktemp("outcomes-log")
    write(TRAFFIC, root)
    log_dir, labels_dir = root / "prediction-log", root / "labels"
    con = labels_module.connect()
    table = labels_module.read_input(root / "labels.parquet")
    known = table["known_at"]
    early = table.filter(pc.less_equal(known, FIRST_INGESTION))
    late = table.filter(pc.greater(known, FIRST_INGESTION))
    frauds = early.filter(pc.equal(early["label"], "fraud")).slice(0, 25)
    reversed_ = frauds.set_column(
        frauds.schema.get_field_index("label"), "label", pa.array(["legitimate"] * frauds.num_rows)
    )
    for part, at in ((early, FIRST_INGESTION), (reversed_, CORRECTIONS), (late, SECOND_INGESTION)):
        parsed, rejects = labels_module.parse(con, part, at)
        assert rejects.num_rows == 0, rejects.to_pylist()[:3]
        labels_module.append(parsed, labels_dir, at)
    garbage = log_dir / "date=2026-01-01" / "hour=00"  # long before the window
    garbage.mkdir(parents=True)
    (garbage / "part-garbage.parquet").write_bytes(b"not a Parquet file")
    later = log_dir / f"date={TRAFFIC.end + dt.timedelta(days=30)}" / "hour=00"
    later.mkdir(parents=True)
    (later / "part-garbage.parquet").write_bytes(b"not a Parquet file")
    return log_dir, labels_dir


def _close(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def test_labels_as_of_agrees_with_duckdb(spark, tables):
    _, labels_dir = tables
    for as_of in AS_OF:
        _check_labels_as_of(spark, labels_dir, as_of)


def _check_labels_as_of(spark, labels_dir, as_of):
    from pyspark.sql import functions as F

    con = labels_module.connect()
    expected = (
        labels_module.labels_as_of(con, labels_dir, as_of)
        .project("transaction_id, is_fraud, epoch_us(known_at), epoch_us(ingested_at), source, amount")
        .order("transaction_id")
        .fetchall()
    )
    got = (
        spark_outcomes.labels_as_of(spark, str(labels_dir), as_of)
        .select(
            "transaction_id", "is_fraud", F.unix_micros("known_at"), F.unix_micros("ingested_at"), "source", "amount"
        )
        .orderBy("transaction_id")
        .collect()
    )
    assert len(expected) > 100
    assert [tuple(r) for r in got] == expected


FIGURES = ("recall", "precision", "alert_rate", "cost_per_1000")
VOLUMES = ("rows", "rows_weighted", "alert_rate_all_rows", "labelled", "labelled_weighted", "frauds_weighted")


def test_outcomes_agree_with_the_one_machine_command(spark, tables):
    """Every point figure of `make outcomes`, per model version and ISO week and per challenger,
    equal on Spark; the partitions outside the window hold garbage neither opens."""
    log_dir, labels_dir = tables
    as_of = AS_OF[1]
    expected = outcomes_module.outcomes(log_dir, labels_dir, FIRST, LAST, as_of, n_boot=10)
    weeks, challengers = spark_outcomes.outcomes(
        spark_outcomes.read_log(spark, str(log_dir), FIRST, LAST),
        spark_outcomes.labels_as_of(spark, str(labels_dir), as_of),
        expected["review_cost"],
    )
    weeks = {(r["model_version"], r["week"]): r.asDict() for r in weeks.collect()}
    challengers = {(r["model_version"], r["week"], r["challenger_version"]): r.asDict() for r in challengers.collect()}

    assert sorted(weeks) == sorted((w["model_version"], w["week"]) for w in expected["weeks"])
    pairs = 0
    for week in expected["weeks"]:
        got = weeks[week["model_version"], week["week"]]
        for name in VOLUMES:
            assert _close(got[name], week[name]), (week["week"], name, got[name], week[name])
        for name in FIGURES:
            assert _close(got[name], week["champion"][name]), (week["week"], name, got[name], week["champion"][name])
        for pair in week["challengers"]:
            key = (week["model_version"], week["week"], pair["version"])
            got_pair = challengers.get(key)
            assert got_pair is not None, key
            assert got_pair["labelled"] == pair["labelled"]
            for name in FIGURES:
                assert _close(got_pair[f"champion_{name}"], pair["champion"][name]), (key, name)
                assert _close(got_pair[f"challenger_{name}"], pair["challenger"][name]), (key, name)
            assert _close(got_pair["cost_difference_per_1000"], pair["cost_difference_per_1000"])
            pairs += 1
    assert pairs == len(challengers) and pairs >= 2  # both challengers of the generated traffic
    assert sum(w["labelled"] for w in expected["weeks"]) > 1000
    assert any(w["rows_weighted"] > w["rows"] for w in expected["weeks"])  # the sampled days weigh more


def test_spark_reads_only_the_partitions_in_range(spark, tables):
    """The physical plans prune by the partitions: the scans' PartitionFilters name the dates (the
    log's) and AS_OF's day (the labels')."""
    log_dir, labels_dir = tables
    plan = spark_outcomes.labels_as_of(spark, str(labels_dir), AS_OF[1])._jdf.queryExecution().executedPlan().toString()
    assert "PartitionFilters: [isnotnull(ingested" in plan and AS_OF[1].date().isoformat() in plan, plan
    plan = spark_outcomes.read_log(spark, str(log_dir), FIRST, LAST)._jdf.queryExecution().executedPlan().toString()
    assert "PartitionFilters: [isnotnull(date" in plan, plan
    assert FIRST.isoformat() in plan and LAST.isoformat() in plan
