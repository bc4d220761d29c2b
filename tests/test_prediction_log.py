"""The prediction log's parts, in one process: frames and their torn tails, the spool's bounds and
drops, sampling, the compactor's exactly-once under crashes (a real kill -9 too), and reading the log
as a table with DuckDB and Spark (local[2]), old and new schema versions together."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service.core.features import FEATURES, N_FEATURES
from service.core.settings import from_mapping
from service.predlog import compactor
from service.predlog.record import COLUMNS, NAMES, SCHEMA_VERSION, arrow_schema
from service.predlog.sink import PredictionLog, decode, kept
from service.predlog.spool import DISK_FULL, SPOOL_FULL, UNWRITABLE, Spool, frame, spool_dir, whole_frames
from stack.launcher import ROOT
from tests.helpers import wait_for

ISSUE_COLUMNS = [
    "request_id",
    "row",
    "ts",
    "route",
    "transaction_id",
    "key_id",
    "model_version",
    "threshold",
    "probability",
    "fraud_score",
    "is_fraud",
    "challenger_version",
    "challenger_probability",
    "challenger_is_fraud",
    "sample_weight",
]


class Counts:
    def __init__(self) -> None:
        self.written = 0
        self.dropped: dict[str, int] = {}

    def wrote(self, rows: int) -> None:
        self.written += rows

    def drop(self, reason: str, rows: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + rows


def make_log(directory: Path, counts: Counts | None = None, **options) -> PredictionLog:
    counts = counts or Counts()
    spool = Spool(
        directory,
        options.pop("max_bytes", 1 << 30),
        options.pop("segment_bytes", 1 << 26),
        options.pop("segment_seconds", 3600),
        on_written=counts.wrote,
        on_dropped=counts.drop,
    )
    return PredictionLog(
        spool,
        model_version="m-1",
        model_sha256="ab" * 32,
        threshold=50,
        key_ids=["k0", "k1"],
        **options,
    )


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def log_scored(
    log: PredictionLog,
    request_id: str,
    X: np.ndarray,
    probability: np.ndarray,
    tids=None,
    outside=None,
    trace_id: str | None = None,
):
    """A batch's records as the batch route logs them, scored with these probabilities."""
    score = np.rint(100 * probability).astype(np.int32)
    outside = np.zeros(X.shape, dtype=np.bool_) if outside is None else outside
    entry = log.entry(request_id, "/v1/fraud-score/batch", 0, tids, trace_id=trace_id)
    log.many(entry, X, probability, score, score >= 50, outside, None, None)


def log_rows(log: PredictionLog, X: np.ndarray, request_id: str = "r", tids=None, trace_id: str | None = None) -> None:
    outside = np.zeros(X.shape, dtype=np.bool_)
    outside[::7, 3] = True
    log_scored(log, request_id, X, np.linspace(0, 1, len(X)), tids, outside, trace_id)


def table(directory: Path) -> pa.Table:
    return pq.ParquetDataset(str(directory)).read()


def test_the_issue_columns_are_the_schemas():
    assert set(ISSUE_COLUMNS) <= set(NAMES)
    start = NAMES.index(FEATURES[0])
    assert NAMES[start : start + N_FEATURES] == FEATURES  # one block, in the model's order
    assert NAMES[-1] == "trace_id"  # version 2's column, after version 1's: a new column goes at the end
    assert len(set(NAMES)) == len(NAMES)
    assert arrow_schema().names == list(NAMES)


def test_frames_round_trip_and_a_torn_tail_is_cut():
    payloads = [os.urandom(n) for n in (1, 2, 100, 5000)]
    data = b"".join(frame(p) for p in payloads)
    found, whole = whole_frames(data)
    assert [bytes(p) for p in found] == payloads and whole == len(data)
    # a segment's allocation past its last frame: zeros, which no record is
    assert whole_frames(data + bytes(100))[1] == len(data)
    for cut in range(1, len(frame(payloads[-1]))):
        found, whole = whole_frames(data[:-cut])
        assert [bytes(p) for p in found] == payloads[:-1]
    corrupt = bytearray(data)
    corrupt[-1] ^= 1  # a bad checksum: the frame is a tail, not a record
    assert len(whole_frames(bytes(corrupt))[0]) == 3


def test_a_batch_frame_decodes_to_what_was_logged(tmp_path):
    log = make_log(tmp_path)
    X = np.random.default_rng(1).normal(size=(40, N_FEATURES))
    log_rows(log, X, tids=[f"t{i}" for i in range(40)])
    data = next(spool_dir(tmp_path).glob("*.open")).read_bytes()
    (payload,), _ = whole_frames(data)
    meta, arrays = decode(payload)
    assert np.array_equal(arrays["X"], X) and meta["tid"][3] == "t3" and meta["model_version"] == "m-1"
    assert meta["ood"][0] == [0, [FEATURES[3]]]


def test_compaction_writes_every_row_once_in_hour_partitions(tmp_path):
    counts = Counts()
    log = make_log(tmp_path, counts)
    X = np.random.default_rng(2).normal(size=(1000, N_FEATURES))
    for i in range(10):
        log_rows(log, X[i * 100 : (i + 1) * 100], request_id=f"r{i}")
    log.one(
        log.entry("single", "/v1/fraud-score", 1, "tx-1", True),
        tuple(X[0]),
        0.25,
        25,
        False,
        ["V1"],
        [{"feature": "V1", "value": 1.0, "contribution": 0.5}],
        None,
    )
    log.spool.seal()
    done = compactor.compact(tmp_path)
    assert done.rows == 1001 and counts.written == 1001 and not counts.dropped
    assert not list(spool_dir(tmp_path).glob("*.seg"))
    (path,) = done.files
    assert path.parent.name.startswith("hour=") and path.parent.parent.name.startswith("date=")
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    read = table(tmp_path)
    assert read.num_rows == 1001
    assert sorted(zip(read["request_id"].to_pylist(), read["row"].to_pylist(), strict=False)) == sorted(
        [(f"r{i}", j) for i in range(10) for j in range(100)] + [("single", 0)]
    )
    single = read.filter(pa.compute.equal(read["request_id"], "single")).to_pylist()[0]
    assert single["transaction_id"] == "tx-1" and single["key_id"] == "k1" and single["explained"]
    assert single["reasons"] == [{"feature": "V1", "value": 1.0, "contribution": 0.5}]
    assert single["ood_features"] == ["V1"] and single["schema_version"] == SCHEMA_VERSION
    assert compactor.compact(tmp_path).rows == 0 and table(tmp_path).num_rows == 1001  # twice: nothing new


def test_records_fall_in_the_hour_they_were_written(tmp_path):
    log = make_log(tmp_path)
    X = np.zeros((3, N_FEATURES))
    hour_ns = 3600 * 10**9
    base = (time.time_ns() // hour_ns) * hour_ns
    for i, ts in enumerate((base + hour_ns - 1, base + hour_ns, base + hour_ns + 5)):
        entry = log.entry(f"r{i}", "/v1/fraud-score/batch", 0)
        log.spool.write(frame(log._meta(entry, ts, 1, {}, 0) + X[0].tobytes() + b"\0" * 19), 1, base)
    log.spool.seal()
    done = compactor.compact(tmp_path)
    assert len(done.files) == 2 and done.rows == 3
    assert sorted(pq.read_table(p).num_rows for p in done.files) == [1, 2]


def test_an_orphaned_segment_is_cut_at_its_last_whole_record_and_sealed(tmp_path):
    log = make_log(tmp_path)
    X = np.ones((10, N_FEATURES))
    log_rows(log, X)
    spool = log.spool
    torn = frame(b"x" * 100)[:-7]  # a frame a kill interrupted mid-copy, before the allocation's zeros
    spool.writer.put(torn)
    # Its writer gone: the lock dies with the descriptor, as it does with a killed process.
    spool.writer.unmap()
    os.close(spool._fd)
    spool._fd = -1
    done = compactor.compact(tmp_path)
    assert done.orphans == 1 and done.rows == 10
    assert not [*spool_dir(tmp_path).glob("*.seg"), *spool_dir(tmp_path).glob("*.open")]  # compacted, deleted


def test_a_segment_born_while_a_pass_looks_does_not_stop_it(tmp_path, monkeypatch):
    log = make_log(tmp_path)
    log_rows(log, np.ones((3, N_FEATURES)))
    log.spool.seal()
    born = spool_dir(tmp_path) / "00000000000000000001-1.new"
    born.touch()
    real_stat = Path.stat

    def renamed_meanwhile(path, *args, **kwargs):  # its worker renamed it `.open` after the listing
        if path == born:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", renamed_meanwhile)
    assert compactor.compact(tmp_path).rows == 3


def test_a_failed_pass_does_not_end_the_compactor(tmp_path, monkeypatch):
    passes = []
    handlers = {}

    def failing(directory):
        passes.append(directory)
        if len(passes) == 1:
            raise OSError("a pass that fails")
        handlers[signal.SIGTERM](signal.SIGTERM, None)  # then asked to stop: one last pass, and out
        return compactor.Pass()

    monkeypatch.setattr(compactor.signal, "signal", lambda signum, handler: handlers.__setitem__(signum, handler))
    monkeypatch.setattr(compactor, "compact", failing)
    monkeypatch.setattr(compactor, "POLL_SECONDS", 0.1)
    assert compactor.main(["--dir", str(tmp_path)]) == 0
    assert len(passes) == 3


def test_a_live_writers_segment_is_left_alone(tmp_path):
    log = make_log(tmp_path)
    log_rows(log, np.ones((5, N_FEATURES)))
    assert compactor.compact(tmp_path).rows == 0
    assert log.spool.segment.exists()


def test_a_compactor_restarted_after_any_crash_writes_each_row_once(tmp_path):
    """The states a kill can leave: a temporary file half written; the Parquet file renamed into
    place but the segment not yet deleted; one of a segment's hours written, not the other."""
    log = make_log(tmp_path)
    log_rows(log, np.ones((50, N_FEATURES)), "a")
    log.spool.seal()
    segment = next(spool_dir(tmp_path).glob("*.seg"))
    kept_copy = segment.read_bytes()
    done = compactor.compact(tmp_path)
    (written,) = done.files
    segment.write_bytes(kept_copy)  # the segment survived the crash
    written.with_name(f".{written.name}.tmp").write_bytes(b"PAR1 half")
    done = compactor.compact(tmp_path)
    assert done.rows == 50
    assert table(tmp_path).num_rows == 50
    assert not list(tmp_path.glob("date=*/hour=*/.*.tmp"))


def test_a_compactor_killed_mid_run_and_restarted_adds_no_duplicate(tmp_path):
    log = make_log(tmp_path, segment_bytes=1 << 16)
    X = np.random.default_rng(3).normal(size=(200, N_FEATURES))
    expected = 0
    for i in range(120):  # many segments: the kill lands between or inside them
        log_rows(log, X, f"r{i}")
        expected += len(X)
        log.spool.seal()
        log.spool.open()
    log.spool.seal()
    run = [sys.executable, "-m", "service.predlog.compactor", "--once", "--dir", str(tmp_path)]
    first = subprocess.Popen(run, cwd=ROOT, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(tmp_path.glob("date=*/hour=*/*.parquet")) or first.poll() is not None, timeout=120)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert subprocess.run(run, cwd=ROOT, timeout=300).returncode == 0
    read = table(tmp_path)
    keys = list(zip(read["request_id"].to_pylist(), read["row"].to_pylist(), strict=False))
    assert len(keys) == expected and len(set(keys)) == expected


def test_a_full_spool_drops_and_counts(tmp_path):
    counts = Counts()
    log = make_log(tmp_path, counts, max_bytes=50_000)
    for i in range(20):
        log_rows(log, np.ones((10, N_FEATURES)), f"r{i}")
    assert counts.dropped[SPOOL_FULL] > 0
    assert counts.written + counts.dropped[SPOOL_FULL] == 200
    log.spool.seal()
    assert compactor.compact(tmp_path).rows == counts.written


def log_singles(log: PredictionLog, n: int, challenger: bool = False) -> list[float]:
    """n single rows as the single route logs them (its one C call), probabilities 0, 1/n, ...;
    with a challenger that says fraud on every third row. Returns the probabilities."""
    probabilities = [i / n for i in range(n)]
    for i, p in enumerate(probabilities):
        row = tuple(float(i + j) for j in range(N_FEATURES))
        entry = log.entry(f"s{i}", "/v1/fraud-score", 0, f"tx-{i}")
        score = round(100 * p)
        log.one(entry, row, p, score, score >= 50, [], None, (0.9 if i % 3 == 0 else 0.1) if challenger else None)
    return probabilities


def test_single_rows_keep_the_limit_rotate_and_count(tmp_path):
    counts = Counts()
    log = make_log(tmp_path, counts, max_bytes=100_000, segment_bytes=8192)
    log_singles(log, 400)
    assert counts.dropped[SPOOL_FULL] > 0
    assert counts.written + counts.dropped[SPOOL_FULL] == 400
    log.spool.seal()
    done = compactor.compact(tmp_path)
    assert done.rows == counts.written and done.segments > 1  # rotated at the segment's size
    read = table(tmp_path)
    assert sorted(read["request_id"].to_pylist(), key=lambda r: int(r[1:])) == [f"s{i}" for i in range(counts.written)]


def test_single_rows_are_sampled_as_a_batchs_are(tmp_path):
    log = make_log(tmp_path, sample=0.25, challenger_version="c-1", challenger_threshold=50)
    n = 3000
    probabilities = log_singles(log, n, challenger=True)
    log.spool.seal()
    compactor.compact(tmp_path)
    read = table(tmp_path).to_pydict()
    always = {f"tx-{i}" for i, p in enumerate(probabilities) if round(100 * p) >= 50 or i % 3 == 0}
    sampled = {f"tx-{i}" for i in range(n) if f"tx-{i}" not in always and kept(f"tx-{i}", 0.25)}
    assert set(read["transaction_id"]) == always | sampled
    weights = dict(zip(read["transaction_id"], read["sample_weight"], strict=True))
    assert all(weights[t] == 1.0 for t in always) and all(weights[t] == 4.0 for t in sampled)


def test_an_unwritable_directory_drops_and_counts(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    counts = Counts()
    log = make_log(blocked, counts)
    for i in range(3):
        log_rows(log, np.ones((4, N_FEATURES)), f"r{i}")
    assert counts.written == 0 and sum(counts.dropped.values()) == 12
    assert set(counts.dropped) <= {UNWRITABLE, DISK_FULL, "error"}


def test_a_full_disk_drops_and_counts(tmp_path, monkeypatch):
    counts = Counts()
    log = make_log(tmp_path, counts)
    log_rows(log, np.ones((4, N_FEATURES)))

    def full(fd, offset, length):  # the kernel's answer when the disk has no block left to allocate
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    big = np.ones((2000, N_FEATURES))  # past the segment's allocation: it must grow, and cannot
    log_rows(log, big, "r2")
    assert counts.written == 4 and counts.dropped == {DISK_FULL: 2000}
    log_rows(log, np.ones((4, N_FEATURES)), "r3")  # what still fits its allocation is kept
    assert counts.written == 8
    log.spool.seal()
    assert compactor.compact(tmp_path).rows == 8


def test_sampling_keeps_flagged_rows_and_weights_the_rest(tmp_path):
    log = make_log(tmp_path, sample=0.25)
    n = 4000
    X = np.zeros((n, N_FEATURES))
    probability = np.where(np.arange(n) % 10 == 0, 0.9, 0.1)
    tids = [f"tx-{i}" for i in range(n)]
    log_scored(log, "s", X, probability, tids)
    log.spool.seal()
    compactor.compact(tmp_path)
    read = table(tmp_path)
    is_fraud = np.array(read["is_fraud"].to_pylist())
    weights = np.array(read["sample_weight"].to_pylist())
    assert is_fraud.sum() == n // 10 and np.all(weights[is_fraud] == 1.0)
    assert np.all(weights[~is_fraud] == 4.0)
    # unbiased: the weighted count of unflagged rows estimates their true count
    assert abs(weights[~is_fraud].sum() - 0.9 * n) < 0.15 * 0.9 * n
    # deterministic from the transaction id: the same rows are kept wherever they are scored
    kept_ids = {tid for tid, f in zip(read["transaction_id"].to_pylist(), is_fraud, strict=True) if not f}
    assert kept_ids == {t for i, t in enumerate(tids) if i % 10 and kept(t, 0.25)}


# Each older version's file, as that version wrote it: the columns of its day.
OLD_VERSIONS = {0: ("client_address", "service_us", "trace_id"), 1: ("trace_id",)}


def old_version_file(directory: Path, version: int = 0) -> None:
    """A file as an older schema wrote it: the same columns but those added since, one row."""
    schema = arrow_schema()
    old = pa.schema([schema.field(c.name) for c in COLUMNS if c.name not in OLD_VERSIONS[version]])
    row = {f.name: [None] for f in old}
    row.update(
        {"schema_version": [version], "request_id": ["old"], "row": [0], "probability": [0.5], "model_version": ["m-0"]}
    )
    if version >= 1:
        row["service_us"] = [42]
    target = directory / "date=2020-01-01" / f"hour=0{version}" / "part-old.parquet"
    target.parent.mkdir(parents=True)
    pq.write_table(pa.table(row, schema=old), target, compression="zstd")


def old_version_files(directory: Path) -> None:
    for version in OLD_VERSIONS:
        old_version_file(directory, version)


def test_duckdb_reads_the_log_with_its_partitions_and_every_schema_version(tmp_path):
    log = make_log(tmp_path)
    log_rows(log, np.ones((30, N_FEATURES)), "new", trace_id=TRACE)
    log.spool.seal()
    compactor.compact(tmp_path)
    old_version_files(tmp_path)
    query = f"""
        select schema_version, count(*) as n, min(date) as date, count(service_us) as timed,
               count(trace_id) as traced, min(trace_id) as trace
        from read_parquet('{tmp_path}/date=*/hour=*/*.parquet', hive_partitioning = true, union_by_name = true)
        group by schema_version order by schema_version"""
    rows = duckdb.sql(query).fetchall()
    assert SCHEMA_VERSION == 2
    assert [(v, n, t, traced) for v, n, _, t, traced, _ in rows] == [(0, 1, 0, 0), (1, 1, 1, 0), (2, 30, 30, 30)]
    assert str(rows[0][2]) == "2020-01-01" and rows[2][5] == TRACE


def test_the_docs_table_is_the_schema():
    text = (ROOT / "docs" / "prediction-log.md").read_text()
    documented = [line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")]
    features = "`, `".join((FEATURES[0], "V1` … `V28", FEATURES[-1]))  # the one line for the 30 features
    named = [c for c in COLUMNS if c.name not in FEATURES]
    at = NAMES.index(FEATURES[0])
    assert documented == [c.name for c in named[:at]] + [features] + [c.name for c in named[at:]]
    for column in named:
        assert f"| `{column.name}` | {column.type} | {column.description} |" in text


def test_verify_log_counts_rows_checked_and_mismatched(tmp_path, small_model):
    """Logged features re-scored with the logged version: all match; a probability changed in the
    log is a mismatch, and the command says so and fails."""
    from service.engine.loader import load_model
    from service.offline import verify_log
    from tests.helpers import TEST_KEY

    settings = from_mapping({"API_KEY": TEST_KEY, "MODEL_PATH": str(small_model[0])})
    model = load_model(settings)
    log = make_log(tmp_path)
    log = PredictionLog(log.spool, model_version=model.version, model_sha256=None, threshold=50, key_ids=["k"])
    X = np.random.default_rng(5).normal(size=(300, N_FEATURES))
    probability = model.scorer.predict_rows(X)
    log_scored(log, "r", X, probability)
    probability[7] = np.nextafter(probability[7], 2.0)  # one bit off
    log_scored(log, "s", X, probability)
    log.spool.seal()
    compactor.compact(tmp_path)
    run = [sys.executable, "-m", "service.offline.verify_log", "--dir", str(tmp_path), "--model", str(small_model[0])]
    env = {**os.environ, "ENV_FILE": "/nonexistent", "MODEL_PATH": str(small_model[0])}
    done = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "checked 600 rows, mismatched 1, skipped 0" in done.stdout
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert verify_log.verify(tmp_path, {model.version: model}, first=today, last=today).checked == 600
    assert verify_log.verify(tmp_path, {model.version: model}, first="2000-01-01", last="2000-01-02").checked == 0


def test_spark_reads_the_log_with_its_partitions_and_every_schema_version(tmp_path, spark):
    log = make_log(tmp_path)
    log_rows(log, np.ones((30, N_FEATURES)), "new", trace_id=TRACE)
    log.spool.seal()
    compactor.compact(tmp_path)
    old_version_files(tmp_path)
    table = spark.read.option("mergeSchema", "true").parquet(str(tmp_path))
    counts = {r["schema_version"]: r["count"] for r in table.groupBy("schema_version").count().collect()}
    assert counts == {0: 1, 1: 1, SCHEMA_VERSION: 30}
    assert {"date", "hour", "service_us", "trace_id", *ISSUE_COLUMNS} <= set(table.columns)
    old = table.filter("schema_version = 0").select("date", "hour", "service_us").collect()[0]
    assert (str(old["date"]), old["hour"], old["service_us"]) == ("2020-01-01", 0, None)
    first = table.filter("schema_version = 1").select("service_us", "trace_id").collect()[0]
    assert (first["service_us"], first["trace_id"]) == (42, None)
    traces = {r["trace_id"] for r in table.filter(f"schema_version = {SCHEMA_VERSION}").select("trace_id").collect()}
    assert traces == {TRACE}
