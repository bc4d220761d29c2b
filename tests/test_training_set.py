"""`make training-set` on a prediction log written in the log's own layout and schema: the label
known at the cut-off and no later one (point in time), one row per retried transaction, immature
rows dropped and counted, the sampling weights carried, and only the partitions of the range read."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.core.features import FEATURES
from service.offline import training_set
from service.predlog import record
from stack.launcher import ROOT

DAY = dt.timedelta(days=1)
START = dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)
LABEL_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("known_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("source", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)


def write_log(log_dir: Path, rows: list[dict]) -> None:
    """Rows (ts, transaction_id, and optionally sample_weight, request_id, features) as the compactor
    writes them: one file per date and hour, the log's schema, the other columns null."""
    schema = record.arrow_schema()
    rng = np.random.default_rng(len(rows))
    by_hour: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        by_hour.setdefault((r["ts"].date().isoformat(), r["ts"].hour), []).append(r)
    for (day, hour), group in by_hour.items():
        columns = {}
        for field in schema:
            if field.name == "ts_ns":
                values = [int(r["ts"].timestamp() * 1e6) * 1000 for r in group]
            elif field.name == "request_id":
                values = [r.get("request_id", uuid.uuid4().hex) for r in group]
            elif field.name == "row":
                values = [0] * len(group)
            elif field.name == "model_version":
                values = ["rf-test"] * len(group)
            elif field.name in FEATURES:
                values = [r.get(field.name, float(rng.normal())) for r in group]
            else:
                values = [r.get(field.name) for r in group]
            columns[field.name] = pa.array(values, field.type)
        target = log_dir / f"date={day}" / f"hour={hour:02d}" / f"part-{uuid.uuid4().hex}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns, schema=schema), target)


def write_labels(labels_dir: Path, ingested_at: dt.datetime, labels: list[tuple[str, bool, dt.datetime]]) -> None:
    """One ingestion run's file in the label table's layout."""
    target = labels_dir / f"ingested={ingested_at.date().isoformat()}" / f"part-{uuid.uuid4().hex}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "transaction_id": [t for t, _, _ in labels],
            "is_fraud": [f for _, f, _ in labels],
            "known_at": [k for _, _, k in labels],
            "ingested_at": [ingested_at] * len(labels),
            "source": ["chargeback"] * len(labels),
            "amount": [None] * len(labels),
        },
        schema=LABEL_SCHEMA,
    )
    pq.write_table(table, target, compression="zstd")


def build(log_dir: Path, labels_dir: Path, as_of: dt.datetime, first=None, last=None) -> tuple[dict, dict]:
    """(rows by transaction id, metadata)."""
    con = training_set.connect()
    table, metadata = training_set.build(con, log_dir, labels_dir, first, last, as_of)
    rows = table.to_arrow_table().to_pylist()
    return {r["transaction_id"]: r for r in rows if r["transaction_id"] is not None}, metadata | {"all": rows}


def test_a_label_ingested_after_the_cut_off_changes_nothing(tmp_path):
    log, labels = tmp_path / "log", tmp_path / "labels"
    write_log(log, [{"ts": START, "transaction_id": "a"}, {"ts": START, "transaction_id": "b"}])
    as_of = START + 150 * DAY
    write_labels(labels, START + 40 * DAY, [("a", True, START + 35 * DAY)])
    before, meta_before = build(log, labels, as_of)
    # Ingested a day after the cut-off: a fraud on b, and a reversal of a (the later label wins from
    # its ingestion on, so it would flip a if it were seen).
    write_labels(labels, as_of + DAY, [("b", True, START + 100 * DAY), ("a", False, START + 149 * DAY)])
    after, meta_after = build(log, labels, as_of)
    assert before == after
    assert meta_before["counts"] == meta_after["counts"]
    assert (after["a"]["Class"], after["a"]["labelled"]) == (1, True)
    assert (after["b"]["Class"], after["b"]["labelled"]) == (0, False)
    # As of a day later both are seen: the reversal supersedes a's fraud, b becomes fraud.
    later, _ = build(log, labels, as_of + 2 * DAY)
    assert (later["a"]["Class"], later["b"]["Class"]) == (0, 1)


def test_a_retried_transaction_is_its_latest_scoring_and_rows_without_an_id_are_all_kept(tmp_path):
    log, labels = tmp_path / "log", tmp_path / "labels"
    write_log(
        log,
        [
            {"ts": START, "transaction_id": "r", "V1": 1.0},
            {"ts": START + dt.timedelta(seconds=2), "transaction_id": "r", "V1": 2.0},
            {"ts": START + dt.timedelta(days=1, hours=3), "transaction_id": "r", "V1": 3.0},  # another partition
            {"ts": START, "transaction_id": "s", "V1": 4.0},
            {"ts": START, "transaction_id": None, "V1": 5.0},
            {"ts": START, "transaction_id": None, "V1": 6.0},
        ],
    )
    rows, meta = build(log, labels, START + 200 * DAY)
    assert rows["r"]["V1"] == 3.0
    assert sorted(r["V1"] for r in meta["all"]) == [3.0, 4.0, 5.0, 6.0]
    counts = meta["counts"]
    assert (counts["scored"], counts["retries_dropped"], counts["without_transaction_id"], counts["rows"]) == (
        6,
        2,
        2,
        4,
    )


def test_rows_whose_labelling_window_is_open_are_dropped_and_counted(tmp_path):
    log, labels = tmp_path / "log", tmp_path / "labels"
    as_of = START + 200 * DAY
    window = training_set.label_window()
    write_log(
        log,
        [
            {"ts": as_of - window, "transaction_id": "closed-just"},
            {"ts": as_of - window + dt.timedelta(seconds=1), "transaction_id": "open-just"},
            {"ts": as_of - 10 * DAY, "transaction_id": "open-fraud"},
            {"ts": START, "transaction_id": "old"},
        ],
    )
    # A fraud already known on an open window is still dropped: keeping only the early labels of
    # young rows would make them look more fraudulent than they are.
    write_labels(labels, as_of - DAY, [("open-fraud", True, as_of - 2 * DAY)])
    rows, meta = build(log, labels, as_of)
    assert set(rows) == {"closed-just", "old"}
    assert meta["counts"]["immature_dropped"] == 2
    assert meta["mature_by"] == (as_of - window).isoformat()


def test_the_sampling_weight_is_carried_and_summed(tmp_path):
    log, labels = tmp_path / "log", tmp_path / "labels"
    write_log(
        log,
        [
            {"ts": START, "transaction_id": "flagged", "sample_weight": 1.0},
            {"ts": START, "transaction_id": "sampled", "sample_weight": 20.0},
            {"ts": START, "transaction_id": "old-schema"},  # no weight logged: it counts once
        ],
    )
    write_labels(labels, START + 30 * DAY, [("flagged", True, START + 30 * DAY)])
    rows, meta = build(log, labels, START + 130 * DAY)
    assert {k: r["sample_weight"] for k, r in rows.items()} == {"flagged": 1.0, "sampled": 20.0, "old-schema": 1.0}
    assert meta["counts"]["weighted_rows"] == 22.0
    assert meta["counts"]["weighted_frauds"] == 1.0


def test_only_the_partitions_of_the_range_are_read(tmp_path):
    log, labels = tmp_path / "log", tmp_path / "labels"
    write_log(log, [{"ts": START, "transaction_id": "in"}, {"ts": START + DAY, "transaction_id": "in-too"}])
    for day in (START - DAY, START + 2 * DAY):
        garbage = log / f"date={day.date().isoformat()}" / "hour=00" / "part-garbage.parquet"
        garbage.parent.mkdir(parents=True)
        garbage.write_bytes(b"not parquet at all")
    rows, meta = build(log, labels, START + 200 * DAY, START.date(), (START + DAY).date())
    assert set(rows) == {"in", "in-too"}
    assert (meta["from"], meta["to"]) == ("2026-01-01", "2026-01-02")
    # The same garbage inside the range is read, and fails: the test above could not pass by luck.
    with pytest.raises(Exception, match="garbage"):
        build(log, labels, START + 200 * DAY, START.date(), (START + 2 * DAY).date())


def test_the_command_writes_the_table_and_its_metadata_and_prints_the_counts(tmp_path):
    log, labels, out = tmp_path / "log", tmp_path / "labels", tmp_path / "out" / "set.parquet"
    write_log(log, [{"ts": START, "transaction_id": "a"}, {"ts": START + DAY, "transaction_id": "b"}])
    write_labels(labels, START + 50 * DAY, [("a", True, START + 45 * DAY)])
    run = [sys.executable, "-m", "service.offline.training_set", "--dir", str(log), "--labels-dir", str(labels)]
    run += ["--from", "2026-01-01", "--to", "2026-01-31", "--as-of", "2026-06-01", "--output", str(out)]
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 rows kept" in done.stdout and "1 fraud" in done.stdout, done.stdout
    table = pq.read_table(out)
    assert table.column_names[:4] == ["transaction_id", "ts", "model_version", "sample_weight"]
    assert [*FEATURES, "Class"] == table.column_names[4 : 4 + len(FEATURES) + 1]
    assert table.column("Class").to_pylist() == [1, 0]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["as_of"] == "2026-06-01T00:00:00+00:00" and meta["counts"]["rows"] == 2
    assert meta["output"] == str(out)


def test_a_range_with_no_log_says_so_in_one_line(tmp_path):
    log = tmp_path / "log"
    write_log(log, [{"ts": START, "transaction_id": "a"}])
    run = [sys.executable, "-m", "service.offline.training_set", "--dir", str(log), "--labels-dir", str(tmp_path)]
    done = subprocess.run(
        [*run, "--from", "2027-01-01", "--to", "2027-01-31"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no prediction log files from 2027-01-01 to 2027-01-31 under {log}"


def test_a_table_is_loaded_for_its_own_window_only_and_a_log_directory_is_built_on_the_fly(tmp_path):
    log, labels, out = tmp_path / "log", tmp_path / "labels", tmp_path / "set.parquet"
    write_log(log, [{"ts": START, "transaction_id": "a", "sample_weight": 4.0}, {"ts": START, "transaction_id": "b"}])
    write_labels(labels, START + 50 * DAY, [("a", True, START + 45 * DAY)])
    as_of = START + 130 * DAY
    con = training_set.connect()
    training_set.write(*training_set.build(con, log, labels, None, None, as_of), out)

    def window(**given):
        return argparse.Namespace(
            **{"first": None, "last": None, "as_of": None, "labels_dir": labels, "default_labels_dir": None, **given}
        )

    from_file, meta = training_set.load(con, out, window(as_of=as_of))
    from_dir, _ = training_set.load(training_set.connect(), log, window(as_of=as_of))
    assert from_file.equals(from_dir)
    X, y, w = training_set.arrays(from_file)
    assert X.shape == (2, len(FEATURES)) and y.tolist() == [1, 0] and w.tolist() == [4.0, 1.0]
    with pytest.raises(training_set.TrainingSetError, match="was built with as_of"):
        training_set.load(con, out, window(as_of=as_of + DAY))
    with pytest.raises(training_set.TrainingSetError, match="not a training set"):
        training_set.load(con, tmp_path / "missing.parquet", window())
