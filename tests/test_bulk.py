"""Bulk scoring on one machine (`make score`): exact against predict_proba and the HTTP service,
bad rows to the rejects file, bad files stopped with one line, workers sharing the mapped model."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

from model import synthetic
from service.core.artifacts import sha256_file
from service.core.features import FEATURES
from service.core.settings import from_mapping
from service.offline.errors import BulkError
from service.offline.job import Job
from service.offline.score_file import score_file
from service.offline.source import Source
from service.offline.tables import Engine, fraud_scores, output_fields
from service.offline.workers import Workers
from tests.helpers import (
    UNLIMITED,
    read_only,
    require_read_only_mounts,
    rows_on_thresholds,
    sklearn_arrays,
    start_stack,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stack(small_model, tmp_path_factory):
    """The real service, its rate limits opened: the parity test sends thousands of rows at once."""
    running = start_stack(small_model[0], tmp_path_factory.mktemp("bulk-stack"), **UNLIMITED)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def engine(small_model) -> Engine:
    return Engine.load(from_mapping({"MODEL_PATH": str(small_model[0])}, require_api_key=False))


@pytest.fixture(scope="module")
def workers(engine):
    running = Workers(engine, 2)
    yield running
    running.close()


@pytest.fixture(scope="module")
def rows(small_model) -> np.ndarray:
    """Unseen rows, frauds among them, and rows sitting exactly on (or a float32 step beside) split
    thresholds, where only sklearn's own float32 cast takes the same branch."""
    X, y = synthetic.generate(4000, seed=77)
    on_thresholds = rows_on_thresholds(sklearn_arrays(small_model[1]), X, np.random.default_rng(5), 1000)
    return np.vstack([X[y == 1], X[:2000], on_thresholds])


def table(X: np.ndarray, order: list[str] | None = None) -> pa.Table:
    """Features in a shuffled column order between an id and a label, as exports tend to be."""
    columns = {"txn_id": pa.array([f"t{i}" for i in range(len(X))])}
    for name in order or list(np.random.default_rng(1).permutation(FEATURES)):
        columns[name] = pa.array(X[:, FEATURES.index(name)])
    columns["Class"] = pa.array(np.arange(len(X)) % 2)
    return pa.table(columns)


def test_every_score_equals_predict_proba_and_the_http_service(engine, workers, rows, small_model, client, tmp_path):
    source = tmp_path / "in.csv"
    pacsv.write_csv(table(rows), source)
    out = tmp_path / "out.parquet"
    summary = score_file(engine, workers, source, out, chunk_rows=700)
    assert (summary.rows, summary.scored, summary.rejected) == (len(rows), len(rows), 0)
    result = pq.read_table(out)
    assert result.column_names[:2] == ["txn_id", "Class"]
    assert result["txn_id"].to_pylist() == [f"t{i}" for i in range(len(rows))]  # input order kept

    expected = small_model[1].predict_proba(rows)[:, 1]
    assert np.array_equal(result["probability"].to_numpy(), expected)  # bit for bit
    assert result["fraud_score"].to_pylist() == [round(100 * p) for p in expected.tolist()]

    answers = []
    for start in range(0, len(rows), 1000):
        transactions = [dict(zip(FEATURES, row, strict=True)) for row in rows[start : start + 1000].tolist()]
        reply = client.request("POST", "/v1/fraud-score/batch", {"transactions": transactions})
        assert reply.status == 200, reply.raw
        answers += reply.json["results"]
    assert result["fraud_score"].to_pylist() == [a["fraud-score"] for a in answers]
    assert result["is_fraud"].to_pylist() == [a["is-fraud"] for a in answers]
    assert result["ood_warning"].to_pylist() == [a["ood-warning"] for a in answers]
    assert result["ood_features"].to_pylist() == [",".join(a.get("ood-features", [])) for a in answers]
    assert set(result["model_version"].to_pylist()) == {answers[0]["model-version"]}
    assert sum(result["is_fraud"].to_pylist()) > 10 and sum(result["ood_warning"].to_pylist()) > 10


def test_fraud_score_rounds_halves_as_python_round():
    halves = np.arange(0, 20001) / 20000  # 100 p = k / 200: every .5 case, and its neighbours
    rng = np.random.default_rng(3)
    probabilities = np.concatenate([halves, np.nextafter(halves, 2), np.nextafter(halves, -1), rng.random(20000)])
    probabilities = np.clip(probabilities, 0, 1)
    assert fraud_scores(probabilities).tolist() == [round(100.0 * p) for p in probabilities.tolist()]


def test_explained_rows_carry_the_services_reasons(engine, workers, rows, client, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(table(rows[:50]), source)
    out = tmp_path / "out.csv"
    score_file(engine, workers, source, out, explain=True, with_features=True)
    result = pacsv.read_csv(out)
    transactions = [dict(zip(FEATURES, row, strict=True)) for row in rows[:50].tolist()]
    answers = client.request("POST", "/v1/fraud-score/batch?explain=true", {"transactions": transactions}).json
    assert [json.loads(r) for r in result["reasons"].to_pylist()] == [a["reasons"] for a in answers["results"]]
    assert np.array_equal(result["V14"].to_numpy(), rows[:50, FEATURES.index("V14")])


def test_bad_rows_go_to_the_rejects_file_and_the_rest_is_scored(engine, workers, rows, small_model, tmp_path):
    good = rows[:300]
    source = tmp_path / "in.csv"
    pacsv.write_csv(table(good, order=list(FEATURES)), source)
    lines = source.read_text().splitlines()
    broken = {  # row number (1-based) -> (feature, text written, reason expected)
        5: ("V3", "", "V3 is missing"),
        6: ("Amount", "12,5", "Amount is not a number: '12,5'"),
        140: ("V7", "abc", "V7 is not a number: 'abc'"),
        141: ("Time", "inf", "Time is not a finite number: inf"),
        142: ("V1", "nan", "V1 is not a finite number: nan"),
        299: ("V28", "1e39", "V28 is beyond the float32 range: 1e39"),
    }
    header = next(csv.reader([lines[0]]))
    for row, (name, text, _) in broken.items():
        cells = next(csv.reader([lines[row]]))
        cells[header.index(name)] = text
        lines[row] = ",".join(f'"{c}"' if "," in c else c for c in cells)
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.parquet"
    summary = score_file(engine, workers, source, out, chunk_rows=64)  # bad rows in several chunks
    assert (summary.rows, summary.scored, summary.rejected) == (300, 294, 6)
    with open(tmp_path / "out.parquet.rejects.csv", newline="") as f:
        rejects = list(csv.DictReader(f))
    assert [(int(r["row"]), r["reason"]) for r in rejects] == [(row, reason) for row, (_, _, reason) in broken.items()]
    result = pq.read_table(out)
    kept = np.array([i + 1 not in broken for i in range(300)])
    assert result["txn_id"].to_pylist() == [f"t{i}" for i in np.flatnonzero(kept)]
    assert np.array_equal(result["probability"].to_numpy(), small_model[1].predict_proba(good[kept])[:, 1])


def run_cli(
    *args: str, env_extra: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update({"ENV_FILE": "/nonexistent/.env", **(env_extra or {})})
    return subprocess.run(
        [*prefix, sys.executable, "-m", "service.offline.bulk", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_scores_quietly_off_a_terminal_and_prints_one_summary(small_model, rows, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(table(rows[:500]), source)
    done = run_cli(
        str(source), str(tmp_path / "out.csv"), "--workers", "2", env_extra={"MODEL_PATH": str(small_model[0])}
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1 and "scored 500 of 500 rows" in done.stderr  # no progress bar
    assert pacsv.read_csv(tmp_path / "out.csv").num_rows == 500


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("served", ["through-sklearn", "converted-in-memory"])
def test_a_model_not_memory_mapped_scores_a_file(rows, tmp_path, served, workers):
    """A model whose arrays are no file's: an estimator the walker cannot serve (sklearn scores it),
    or the seed's own estimator in a read-only directory (converted in memory at every start)."""
    X, y = synthetic.generate(6000, seed=41)
    directory = tmp_path / "model"
    directory.mkdir()
    path = directory / "model.joblib"
    if served == "through-sklearn":
        # Trees the walker does not take; sklearn casts the rows to float32 itself, as the walker does.
        estimator = GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=3).fit(X, y)
        prefix: tuple[str, ...] = ()
    else:
        estimator = RandomForestClassifier(n_estimators=8, random_state=3).fit(X, y)
        require_read_only_mounts(directory)
        prefix = read_only(directory)
    joblib.dump(estimator, path)
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table(rows[:700]), source)
    done = run_cli(
        str(source),
        str(out),
        "--workers",
        workers,
        "--chunk-rows",
        "300",
        prefix=prefix,
        env_extra={"MODEL_PATH": str(path), "MODEL_SHA256": sha256_file(path)},
    )
    assert done.returncode == 0 and "scored 700 of 700 rows" in done.stderr, done.stderr
    assert np.array_equal(pq.read_table(out)["probability"].to_numpy(), estimator.predict_proba(rows[:700])[:, 1])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "No such file or directory"),
        (b"", "the file is empty"),
        (b"Time,V1,V2\n1,2,3\n", "lacks the feature columns V3, V4"),
        (b"\x00\x01 not parquet", "cannot read"),
    ],
    ids=["missing-file", "empty", "wrong-header", "not-parquet"],
)
def test_a_bad_file_stops_at_once_with_one_line(small_model, tmp_path, content, message):
    source = tmp_path / ("in.parquet" if content and content.startswith(b"\x00") else "in.csv")
    if content is not None:
        source.write_bytes(content)
    done = run_cli(str(source), str(tmp_path / "out.parquet"), env_extra={"MODEL_PATH": str(small_model[0])})
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_a_failed_run_keeps_an_earlier_runs_output_and_rejects_both(engine, workers, rows, tmp_path):
    source, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    pacsv.write_csv(table(rows[:200], order=list(FEATURES)), source)
    lines = source.read_text().splitlines()
    lines[9] = lines[9].replace(",", ",abc", 1)  # a row refused: its second column is not a number
    source.write_text("\n".join(lines) + "\n")
    assert score_file(engine, workers, source, out, chunk_rows=50).rejected == 1
    rejects = tmp_path / "out.parquet.rejects.csv"
    before = out.read_bytes(), rejects.read_bytes()
    lines[150] = "t149,1,2"  # now a malformed line: the next run stops
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(BulkError, match="columns"):
        score_file(engine, workers, source, out, chunk_rows=50)
    assert (out.read_bytes(), rejects.read_bytes()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.csv", "out.parquet", "out.parquet.rejects.csv"]


def test_an_unverified_model_stops_with_one_line(small_model, tmp_path):
    done = run_cli("in.csv", str(tmp_path / "out.parquet"), env_extra={"MODEL_PATH": str(tmp_path / "none.joblib")})
    assert done.returncode != 0 and done.stderr.startswith("model error: ") and "Traceback" not in done.stderr


def test_workers_read_the_one_mapped_artifact_without_copies(engine, workers, rows, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(table(rows), source)
    # Batches are scored from tables built from the artifact before the fork; --explain walks the
    # trees, so its workers read the artifact's pages themselves.
    for explain in (False, True):
        score_file(engine, workers, source, tmp_path / "out.parquet", chunk_rows=500, explain=explain)
        seen = {m["pid"]: m for m in workers.mappings()}
        assert os.getpid() not in seen and len(seen) == 2
        for mapping in seen.values():
            # Inherited from the parent's mapping: file-backed pages, none privately copied.
            assert mapping["mappings"] >= 1 and (mapping["Rss"] > 0 or not explain)
            assert mapping["Private_Dirty"] == 0 and mapping["Anonymous"] == 0


@pytest.mark.parametrize("count", [1, 2, 3])
def test_workers_reading_their_own_pieces_give_the_file_in_order(engine, rows, small_model, tmp_path, count):
    """Each worker reads its own share (CSV line ranges; Parquet row groups, or every n-th chunk
    of a file with fewer row groups than workers): one output, in input order, bit-exact."""
    expected = small_model[1].predict_proba(rows)[:, 1]
    ids = [f"t{i}" for i in range(len(rows))]
    sources = {
        "row-groups.parquet": lambda path: pq.write_table(table(rows), path, row_group_size=333),
        "one-group.parquet": lambda path: pq.write_table(table(rows), path),
        "lines.csv": lambda path: pacsv.write_csv(table(rows), path),
    }
    running = Workers(engine, count)
    try:
        for name, write in sources.items():
            write(tmp_path / name)
            out = tmp_path / f"{name}.out.parquet"
            summary = score_file(engine, running, tmp_path / name, out, chunk_rows=97)
            assert (summary.rows, summary.rejected) == (len(rows), 0), name
            result = pq.read_table(out)
            assert result["txn_id"].to_pylist() == ids, name
            assert np.array_equal(result["probability"].to_numpy(), expected), name
    finally:
        running.close()


def test_csv_line_endings_blank_lines_and_a_last_line_without_newline(engine, workers, rows, small_model, tmp_path):
    good = rows[:400]
    text = io.BytesIO()
    pacsv.write_csv(table(good, order=list(FEATURES)), text)
    lines = text.getvalue().decode().splitlines()
    lines[50:50] = ["", ""]  # blank lines are not rows
    source = tmp_path / "in.csv"
    source.write_bytes("\r\n".join(lines).encode())  # CRLF, and no line end after the last row
    summary = score_file(engine, workers, source, tmp_path / "out.parquet", chunk_rows=13)
    assert (summary.rows, summary.rejected) == (400, 0)
    result = pq.read_table(tmp_path / "out.parquet")
    assert result["txn_id"].to_pylist() == [f"t{i}" for i in range(400)]
    assert np.array_equal(result["probability"].to_numpy(), small_model[1].predict_proba(good)[:, 1])


def test_a_csv_line_spanning_a_whole_arrow_block_is_read_whole(engine, workers, rows, small_model, tmp_path):
    """Arrow parses a CSV piece in blocks of Source.CSV_BLOCK_BYTES, and refuses a line longer
    than two (one that spans a block): that piece is read in one block, its rows and text as they were."""
    good = rows[:300]
    data = table(good).append_column(
        "note", pa.array(["x" * (2 * Source.CSV_BLOCK_BYTES + 10) if i == 7 else "" for i in range(300)])
    )
    source = tmp_path / "in.csv"
    pacsv.write_csv(data, source)
    summary = score_file(engine, workers, source, tmp_path / "out.parquet", chunk_rows=100)
    assert (summary.rows, summary.rejected) == (300, 0)
    result = pq.read_table(tmp_path / "out.parquet")
    assert result["txn_id"].to_pylist() == [f"t{i}" for i in range(300)]
    assert [len(note or "") for note in result["note"].to_pylist()] == [len(note) for note in data["note"].to_pylist()]
    assert np.array_equal(result["probability"].to_numpy(), small_model[1].predict_proba(good)[:, 1])


def test_a_malformed_csv_line_in_a_workers_piece_stops_with_one_line(small_model, rows, tmp_path):
    source = tmp_path / "in.csv"
    pacsv.write_csv(table(rows[:3000]), source)
    lines = source.read_text().splitlines()
    lines[2500] = "t2499,1,2"  # far into the file: in the second worker's share
    source.write_text("\n".join(lines) + "\n")
    done = run_cli(
        str(source),
        str(tmp_path / "out.parquet"),
        "--workers",
        "2",
        "--chunk-rows",
        "200",
        env_extra={"MODEL_PATH": str(small_model[0])},
    )
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "cannot read" in done.stderr and "columns" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.rejects.csv").exists()


@pytest.mark.parametrize("count", [1, 2])
def test_bad_values_in_a_one_group_parquet_file_are_refused_as_in_csv(engine, rows, small_model, tmp_path, count):
    """A Parquet file of one row group is decoded once by the parent, which hands the workers the
    rows to walk: refused rows, their reasons and row numbers, and the features written out are
    those of every other path."""
    good = rows[:600]
    data = table(good, order=list(FEATURES))
    broken = {  # row number (1-based) -> (feature, value, reason expected)
        5: ("V3", None, "V3 is missing"),
        141: ("Time", float("inf"), "Time is not a finite number: inf"),
        142: ("V1", float("nan"), "V1 is not a finite number: nan"),
        143: ("V1", None, "V1 is missing"),
        599: ("V28", 1e39, "V28 is beyond the float32 range: 1e+39"),
    }
    columns = {name: data[name].to_pylist() for name in data.column_names}
    for row, (name, value, _) in broken.items():
        columns[name][row - 1] = value
    amount = [repr(v) for v in columns["Amount"]]  # a text column: cast to numbers, as from CSV
    amount[299], amount[300] = "12,5", "abc"
    columns["Amount"] = amount
    broken[300] = ("Amount", "12,5", "Amount is not a number: '12,5'")
    broken[301] = ("Amount", "abc", "Amount is not a number: 'abc'")
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table(columns), source)  # one row group
    running = Workers(engine, count)
    try:
        out = tmp_path / "out.parquet"
        summary = score_file(engine, running, source, out, chunk_rows=64, with_features=True)
    finally:
        running.close()
    assert (summary.rows, summary.rejected) == (600, len(broken))
    with open(tmp_path / "out.parquet.rejects.csv", newline="") as f:
        rejects = [(int(r["row"]), r["reason"]) for r in csv.DictReader(f)]
    assert rejects == [(row, broken[row][2]) for row in sorted(broken)]
    kept = np.array([i + 1 not in broken for i in range(600)])
    result = pq.read_table(out)
    assert result["txn_id"].to_pylist() == [f"t{i}" for i in np.flatnonzero(kept)]
    assert np.array_equal(result["probability"].to_numpy(), small_model[1].predict_proba(good[kept])[:, 1])
    assert np.array_equal(result["V14"].to_numpy(), good[kept, FEATURES.index("V14")])
    assert summary.fraud == sum(result["is_fraud"].to_pylist()) and summary.ood == sum(
        result["ood_warning"].to_pylist()
    )


@pytest.mark.parametrize("name", ["one-group.parquet", "lines.csv"])
def test_a_dead_worker_stops_the_run_with_one_line(engine, rows, tmp_path, name):
    """Whether the parent hands the rows over (one-group Parquet) or the workers read (CSV)."""
    path = tmp_path / name
    data = table(np.vstack([rows] * 3))
    pq.write_table(data, path) if name.endswith(".parquet") else pacsv.write_csv(data, path)
    source = Source(path, chunk_rows=50)
    schema = pa.schema([source.schema.field("txn_id"), source.schema.field("Class"), *output_fields(False)])
    running = Workers(engine, 2)
    try:
        results = running.results(Job(engine, source, schema, ["txn_id", "Class"], False, False))
        next(results)
        os.kill(running.pids()[0], signal.SIGKILL)
        with pytest.raises(BulkError, match=r"^a scoring process stopped \(exit code -9\)$"):
            for _ in results:
                pass
    finally:
        running.close()
    assert running.pids() == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bytes_that_are_not_utf8_stop_the_run_naming_the_files_row(small_model, rows, tmp_path, workers):
    """Arrow numbers the rows of the piece it was reading; the line names the row as the rejects
    file would (data rows from 1), wherever the piece starts."""
    source = tmp_path / "in.csv"
    pacsv.write_csv(table(rows[:3000]), source)
    lines = source.read_bytes().split(b"\n")
    lines[2500] = lines[2500].replace(b'"t2499"', b'"t\xff2499"')  # data row 2500, in a late piece
    source.write_bytes(b"\n".join(lines))
    done = run_cli(
        str(source),
        str(tmp_path / "out.parquet"),
        "--workers",
        workers,
        "--chunk-rows",
        "200",
        env_extra={"MODEL_PATH": str(small_model[0])},
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "row 2500:" in done.stderr and "Row #" not in done.stderr, done.stderr
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("count", [2, 3])
def test_workers_decoding_shares_of_the_columns_write_what_one_process_writes(engine, rows, tmp_path, count):
    """A one-row-group file of the features alone (nothing for the parent to decode): the workers
    each decode a share of the columns; a row refused in several shares carries every reason, in
    the features' order. Output and rejects are those of one process reading whole batches."""
    data = table(rows[:3000], order=list(FEATURES)).drop(["txn_id", "Class"])
    columns = {name: data[name].to_pylist() for name in FEATURES}
    for row, changes in {
        0: {"Time": None},
        64: {"V1": float("nan"), "V20": None, "Amount": 1e39},
        65: {"V13": float("-inf"), "V14": float("inf")},
        2999: {"V28": None},
    }.items():
        for name, value in changes.items():
            columns[name][row] = value
    source = tmp_path / "features.parquet"
    pq.write_table(pa.table(columns), source)
    written = {}
    for processes in (1, count):
        running = Workers(engine, processes)
        try:
            out = tmp_path / f"out-{processes}.parquet"
            summary = score_file(engine, running, source, out, chunk_rows=64)
        finally:
            running.close()
        written[processes] = (pq.read_table(out), (tmp_path / f"out-{processes}.parquet.rejects.csv").read_text())
        assert (summary.rows, summary.rejected) == (3000, 4)
    assert written[count][0].equals(written[1][0])
    assert written[count][1] == written[1][1]
    assert "66,V13 is not a finite number: -inf; V14 is not a finite number: inf" in written[count][1]
    assert (
        "V1 is not a finite number: nan; V20 is missing; Amount is beyond the float32 range: 1e+39" in written[count][1]
    )
