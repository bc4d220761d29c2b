"""The label table (service/offline/labels.py): ingestion from CSV as published or saved by a
spreadsheet and from Parquet, the rejects file, append-only files, supersession, and the label known
at an instant (`labels_as_of`), point in time."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.offline import labels
from service.predlog.record import arrow_schema
from stack.launcher import ROOT

UTC = dt.UTC
FEB = dt.datetime(2026, 2, 1, tzinfo=UTC)
MAR = dt.datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_settings(monkeypatch, tmp_path):
    """No .env and no LABELS_DIR / PREDICTION_LOG_DIR from the machine: each test names its own."""
    monkeypatch.setenv("ENV_FILE", str(tmp_path / "no.env"))
    for name in ("LABELS_DIR", "PREDICTION_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)


def ingest(path: Path, directory: Path, at: dt.datetime, *extra: str) -> int:
    return labels.main([str(path), "--dir", str(directory), "--ingested-at", at.isoformat(), *extra])


def known(directory: Path, as_of: dt.datetime) -> dict[str, tuple]:
    con = labels.connect()
    rows = labels.labels_as_of(con, directory, as_of).fetchall()
    return {r[0]: r[1:] for r in rows}


def table_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("ingested=*/*.parquet"))


CSV_VARIANTS = {
    "published": b'"transaction_id","label","known_at"\n"a","1","2026-01-05"\n"b","0","2026-01-06T10:30:00Z"\n',
    "spreadsheet": b"\xef\xbb\xbftransaction_id,label,known_at\r\na,1,2026-01-05\r\nb,0,2026-01-06 10:30:00\r\n",
    "words": b"known_at,label,note,transaction_id\n2026-01-05,Fraud,x,a\n2026-01-06T12:30:00+02:00,legitimate,y, b \n",
}


@pytest.mark.parametrize("variant", sorted(CSV_VARIANTS))
def test_csv_variants_give_the_same_labels(tmp_path, variant):
    path = tmp_path / "in.csv"
    path.write_bytes(CSV_VARIANTS[variant])
    assert ingest(path, tmp_path / "labels", FEB) == 0
    got = known(tmp_path / "labels", MAR)
    assert got == {
        "a": (True, dt.datetime(2026, 1, 5, tzinfo=UTC), FEB, None, None),
        "b": (False, dt.datetime(2026, 1, 6, 10, 30, tzinfo=UTC), FEB, None, None),
    }


def test_parquet_input_typed_columns(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {
                "transaction_id": ["a", "b", "c"],
                "label": pa.array([1, 0, 1], pa.int64()),
                "known_at": pa.array([dt.datetime(2026, 1, 5, 8), dt.datetime(2026, 1, 6), None], pa.timestamp("ms")),
                "source": ["Chargeback", "review", None],
                "amount": [12.5, None, 3.0],
            }
        ),
        path,
    )
    assert ingest(path, tmp_path / "labels", FEB) == 0
    got = known(tmp_path / "labels", MAR)
    assert got == {
        "a": (True, dt.datetime(2026, 1, 5, 8, tzinfo=UTC), FEB, "chargeback", 12.5),
        "b": (False, dt.datetime(2026, 1, 6, tzinfo=UTC), FEB, "review", None),
    }
    assert (tmp_path / "in.parquet.rejects.csv").read_text().splitlines() == ['"row","reason"', '3,"missing known_at"']


def test_the_written_file_has_the_agreed_schema_and_name(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("transaction_id,label,known_at,source,amount\na,1,2026-01-05,case,9.5\n")
    assert ingest(path, tmp_path / "labels", FEB) == 0
    (written,) = table_files(tmp_path / "labels")
    assert written.parent.name == "ingested=2026-02-01"
    assert written.name.startswith(f"part-{int(FEB.timestamp()) * 10**9}-") and written.suffix == ".parquet"
    assert pq.read_schema(written).remove_metadata() == labels.LABEL_SCHEMA
    assert pq.ParquetFile(written).metadata.row_group(0).column(0).compression == "ZSTD"
    assert not [p for p in written.parent.iterdir() if p != written]  # no temporary left behind


def test_rejects_say_row_and_reason_and_the_run_counts(tmp_path, capsys):
    path = tmp_path / "in.csv"
    path.write_text(
        "transaction_id,label,known_at,source,amount\n"
        "ok1,1,2026-01-05,chargeback,10\n"
        ",1,2026-01-05,,\n"
        "t3,maybe,2026-01-05,,\n"
        "t4,0,05/01/2026,,\n"
        "t5,0,2026-02-30,,\n"
        "t6,,2026-01-05,,\n"
        "t7,1,2026-03-05,,\n"
        "t8,1,2026-01-05,rumour,\n"
        "t9,1,2026-01-05,,ten\n"
        "ok2,legitimate,2026-01-07,review,\n"
        "ok1,0,2026-01-04,case,\n"
    )
    rejects = tmp_path / "out" / "bad.csv"
    assert ingest(path, tmp_path / "labels", FEB, "--rejects", str(rejects)) == 0
    assert rejects.read_text().splitlines() == [
        '"row","reason"',
        '2,"missing transaction_id"',
        '3,"unknown label maybe (1/0 or fraud/legitimate)"',
        '4,"known_at 05/01/2026 is not an ISO date or timestamp"',
        '5,"known_at 2026-02-30 is not an ISO date or timestamp"',
        '6,"missing label"',
        '7,"known_at 2026-03-05 is after the ingestion time"',
        '8,"unknown source rumour (chargeback, case or review)"',
        '9,"amount ten is not a number"',
    ]
    out = capsys.readouterr().out
    assert f"read 11, appended 2, rejected 8 ({rejects}), superseded within the file 1" in out
    # Within one file the later known_at is the label: ok1's chargeback, not the earlier case.
    assert known(tmp_path / "labels", MAR)["ok1"][:2] == (True, dt.datetime(2026, 1, 5, tzinfo=UTC))


def test_a_later_label_supersedes_from_its_ingestion_on_and_nothing_is_rewritten(tmp_path):
    directory = tmp_path / "labels"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("transaction_id,label,known_at,source\na,0,2026-01-10,review\nb,1,2026-01-11,chargeback\n")
    second.write_text("transaction_id,label,known_at,source\na,1,2026-02-20,chargeback\n")
    assert ingest(first, directory, FEB) == 0
    (first_file,) = table_files(directory)
    before = first_file.read_bytes()
    later = dt.datetime(2026, 2, 25, 9, tzinfo=UTC)
    assert ingest(second, directory, later) == 0
    assert first_file.read_bytes() == before
    assert len(table_files(directory)) == 2

    assert known(directory, FEB - dt.timedelta(microseconds=1)) == {}
    as_of_feb = known(directory, FEB)
    assert as_of_feb["a"][0] is False and as_of_feb["b"][0] is True
    just_before = known(directory, later - dt.timedelta(microseconds=1))
    assert just_before["a"] == (False, dt.datetime(2026, 1, 10, tzinfo=UTC), FEB, "review", None)
    assert known(directory, later)["a"] == (True, dt.datetime(2026, 2, 20, tzinfo=UTC), later, "chargeback", None)
    assert known(directory, MAR)["b"][0] is True
    # The latest ingestion wins even when what it says became known earlier (a late correction).
    correction = tmp_path / "correction.csv"
    correction.write_text("transaction_id,label,known_at,source\nb,0,2026-01-02,case\n")
    assert ingest(correction, directory, MAR) == 0
    assert known(directory, MAR)["b"] == (False, dt.datetime(2026, 1, 2, tzinfo=UTC), MAR, "case", None)
    assert known(directory, MAR - dt.timedelta(microseconds=1))["b"][0] is True


def test_the_same_ingestion_instant_is_decided_by_known_at(tmp_path):
    directory = tmp_path / "labels"
    for name, text in (("x.csv", "a,1,2026-01-20\n"), ("y.csv", "a,0,2026-01-10\n")):
        (tmp_path / name).write_text("transaction_id,label,known_at\n" + text)
        assert ingest(tmp_path / name, directory, FEB) == 0
    assert known(directory, MAR)["a"][:2] == (True, dt.datetime(2026, 1, 20, tzinfo=UTC))


def test_a_naive_as_of_is_utc_and_the_table_may_be_empty(tmp_path):
    assert known(tmp_path / "none", MAR) == {}
    rel = labels.labels_as_of(labels.connect(), tmp_path / "none", MAR)
    schema = rel.to_arrow_table().schema
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in labels.LABEL_SCHEMA]
    (tmp_path / "in.csv").write_text("transaction_id,label,known_at\na,1,2026-01-05\n")
    assert ingest(tmp_path / "in.csv", tmp_path / "labels", FEB) == 0
    assert known(tmp_path / "labels", dt.datetime(2026, 2, 1)) != {}
    assert known(tmp_path / "labels", dt.datetime(2026, 1, 31, 23, 59)) == {}


def log_file(directory: Path, ids: list[str]) -> None:
    schema = arrow_schema()
    columns = {f.name: pa.nulls(len(ids), f.type) for f in schema}
    columns["transaction_id"] = pa.array(ids)
    target = directory / "date=2026-01-05" / "hour=10" / "part-1.parquet"
    target.parent.mkdir(parents=True)
    pq.write_table(pa.table(columns, schema=schema), target)


def test_labels_the_prediction_log_never_saw_are_counted(tmp_path, capsys):
    log_file(tmp_path / "log", ["a", "b", None])
    (tmp_path / "in.csv").write_text("transaction_id,label,known_at\na,1,2026-01-05\nzz,0,2026-01-05\nb,0,2026-01-06\n")
    assert ingest(tmp_path / "in.csv", tmp_path / "labels", FEB, "--log-dir", str(tmp_path / "log")) == 0
    assert f"never seen by the prediction log ({tmp_path / 'log'}): 1 of 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "No such file or directory"),
        (b"", "the file is empty"),
        (b"transaction_id,label,known_at\n", "no rows after the header"),
        (b"transaction_id,label\na,1\n", "missing columns known_at"),
        (b"\xff\xfe\x00garbage", "cannot read"),
    ],
)
def test_an_unusable_file_is_one_line_and_exit_2(tmp_path, content, says):
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_bytes(content)
    env = {"PATH": "/usr/bin:/bin", "ENV_FILE": str(tmp_path / "no.env")}
    run = subprocess.run(
        [sys.executable, "-m", "service.offline.labels", str(path), "--dir", str(tmp_path / "labels")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run
    assert run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and says in run.stderr, run.stderr
    assert not (tmp_path / "labels").exists()
