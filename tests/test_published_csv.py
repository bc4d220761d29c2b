"""The published creditcard.csv's own format (quoted header names, `Class` a quoted "0"/"1", `Time`
an integer on most rows), and the same file saved by a spreadsheet (byte-order mark, CRLF), read
unchanged by every command that reads a transactions file: `make model`, `make evaluate`, `make
score` and `make features`, each run here as its own command; a bad file stops each with one line
naming the file, the row and what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pyarrow.parquet as pq
import pytest
import redis

from model import synthetic
from service.core.features import FEATURES
from service.offline import labelled
from service.store.feature_record import encode_record
from stack.harness import free_port
from stack.launcher import RedisServer
from tests.helpers import write_published_csv

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ["published", "spreadsheet"]


@pytest.fixture(scope="module")
def rows():
    """Generated rows with enough frauds for a split: the training distribution's."""
    X, y = synthetic.generate(5000, seed=8)
    Xf, yf = synthetic.generate(40_000, seed=9)
    return np.vstack([X, Xf[yf == 1][:40]]), np.concatenate([y, yf[yf == 1][:40]])


@pytest.fixture(scope="module", params=FORMATS)
def published(request, rows, tmp_path_factory):
    """(path, X, y) of the rows written in the published format, or as a spreadsheet saved it."""
    X, y = rows
    path = tmp_path_factory.mktemp(request.param) / "creditcard.csv"
    return write_published_csv(path, X, y, spreadsheet=request.param == "spreadsheet"), X, y


def command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A command as the Makefile runs it (the module, with this checkout first on the path)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "ENV_FILE": "/nonexistent", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def test_the_reader_returns_the_rows_exactly_as_generated(published):
    path, X, y = published
    got_X, got_y = labelled.read(path)
    assert np.array_equal(got_X, X) and np.array_equal(got_y, y)


@pytest.fixture(scope="module")
def trained(published, tmp_path_factory):
    """`make model CSV=…` on the file: python -m model.train --csv."""
    path = published[0]
    out = tmp_path_factory.mktemp("model") / "fraud-model.joblib"
    done = command("model.train", "--csv", str(path), "--trees", "5", "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "held-out split (1008 rows, 10 frauds)" in done.stdout
    return out


def test_make_model_trains_on_it(trained, published):
    manifest = json.loads(trained.with_name("fraud-model.manifest.json").read_text())
    assert manifest["data_source"].startswith("csv:creditcard.csv sha256=")
    assert manifest["metrics"]["n_train"] + manifest["metrics"]["n_test"] == len(published[2])


def test_make_evaluate_reads_it(trained, published, tmp_path):
    path, _, y = published
    report = tmp_path / "report.html"
    done = command(
        "model.evaluate", "--champion", str(trained), "--csv", str(path), "--bootstrap", "5", "--output", str(report)
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(report.with_suffix(".json").read_text())
    assert (figures["rows"], figures["frauds"]) == (len(y), int(y.sum()))


def test_make_score_reads_it_and_passes_class_through_as_written(trained, published, tmp_path):
    path, X, y = published
    out = tmp_path / "scores.parquet"
    done = command("service.offline.bulk", str(path), str(out), "--workers", "2", env={"MODEL_PATH": str(trained)})
    assert done.returncode == 0, done.stderr
    assert f"scored {len(y):,} of {len(y):,} rows" in done.stderr and "0 rejected" in done.stderr
    scores = pq.read_table(out)
    assert scores.column("Class").to_pylist() == [str(label) for label in y.tolist()]
    expected = joblib.load(trained).predict_proba(X)[:, 1]
    assert np.array_equal(scores.column("probability").to_numpy(), expected)


def test_make_features_reads_it(published, tmp_path):
    _, X, y = published
    spreadsheet = published[0].read_bytes().startswith(b"\xef\xbb\xbf")
    ids = [f"tx-{i}" for i in range(len(y))]
    path = write_published_csv(tmp_path / "transactions.csv", X, y, spreadsheet=spreadsheet, ids=ids)
    server = RedisServer(free_port()).start()
    try:
        done = command("service.offline.feature_writer", str(path), "--url", server.url, "--prefix", "pub:")
        assert done.returncode == 0, done.stderr
        assert f"{len(y):,} records written, 0 rejected" in done.stderr
        client = redis.Redis.from_url(server.url)
        for i in (0, 1, 2, len(y) - 1):
            assert client.get(f"pub:tx-{i}") == encode_record(X[i].tolist())
        # The published file itself has no id column: `make features ROW_IDS=1` numbers its rows.
        done = command("service.offline.feature_writer", str(published[0]), "--url", server.url, "--row-ids")
        assert done.returncode == 0, done.stderr
        assert f"{len(y):,} records written, 0 rejected" in done.stderr
        for i in (0, 1, 2, len(y) - 1):
            assert client.get(f"fraud:tx:{i + 1}") == encode_record(X[i].tolist())
    finally:
        server.stop()


def bad_copy(path: Path, tmp_path: Path, row: int, replace: tuple[str, str]) -> Path:
    """The file with one field of data row `row` (1-based, the header not counted) changed."""
    data = path.read_bytes()
    end = b"\r\n" if b"\r\n" in data else b"\n"
    lines = data.split(end)
    old, new = replace
    assert old.encode() in lines[row]
    lines[row] = lines[row].replace(old.encode(), new.encode(), 1)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(end.join(lines))
    return bad


def test_a_bad_row_stops_training_and_evaluation_with_one_line(published, trained, tmp_path):
    path, X, y = published
    v3 = repr(float(X[1233, FEATURES.index("V3")]))
    not_a_number = bad_copy(path, tmp_path, 1234, (v3, "abc"))
    done = command("model.train", "--csv", str(not_a_number), "--trees", "2", "--output", str(tmp_path / "m.joblib"))
    assert done.returncode == 1
    assert done.stderr == f"error: {not_a_number}: row 1234: V3 is not a number: 'abc'\n"
    done = command("model.evaluate", "--champion", str(trained), "--csv", str(not_a_number))
    assert done.stderr == f"error: {not_a_number}: row 1234: V3 is not a number: 'abc'\n"

    label = '"1"' if y[99] else '"0"'
    bad_label = bad_copy(path, tmp_path, 100, (label, '"2"'))
    done = command("model.train", "--csv", str(bad_label), "--output", str(tmp_path / "m.joblib"))
    assert done.stderr == f"error: {bad_label}: row 100: Class must be 0 or 1, not '2'\n"

    short = bad_copy(path, tmp_path, 4321, (f',"{int(y[4320])}"', ""))
    done = command("model.train", "--csv", str(short), "--output", str(tmp_path / "m.joblib"))
    assert done.stderr.startswith(f"error: cannot read {short}: CSV parse error: row 4321: Expected 31 columns, got 30")
    assert done.stderr.count("\n") == 1


def test_a_file_without_the_label_or_a_feature_says_which(tmp_path):
    X, y = synthetic.generate(50, seed=3)
    path = write_published_csv(tmp_path / "creditcard.csv", X, y)
    lines = path.read_text().splitlines()
    no_class = tmp_path / "no-class.csv"
    no_class.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    with pytest.raises(labelled.LabelledFileError, match=f"^{no_class}: missing columns Class$"):
        labelled.read(no_class)
    with pytest.raises(labelled.LabelledFileError, match="cannot read .*empty"):
        labelled.read(Path(os.devnull))
