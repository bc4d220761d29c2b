"""The prediction log over the real stack (nginx, gunicorn's workers, the compactor beside them,
redis-server for the by-id routes, a challenger): what every route answered is what the log holds,
bit for bit; a worker killed with -9 under load loses no answered row; a full spool and a read-only
directory cost records (counted), never an answer."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis

from model import synthetic
from service.core.features import FEATURES, N_FEATURES
from service.core.settings import from_mapping
from service.offline import verify_log
from service.predlog.sink import key_id
from service.store.feature_record import encode_record
from service.telemetry.stages import STAGES
from stack.harness import EXTERNAL_SKIP_REASON, free_port
from stack.launcher import ROOT, RedisServer
from tests.helpers import (
    EXTERNAL,
    TEST_KEY,
    UNLIMITED,
    Client,
    as_transaction,
    read_only,
    require_read_only_mounts,
    samples,
    server_timing,
    start_stack,
    two_trained_models,
    value,
    wait_for,
    workers_of,
)

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason=EXTERNAL_SKIP_REASON)
PREFIX = "log:tx:"


def read_log(directory) -> dict:
    """The compacted log, by (request_id, row); asserts no row is there twice."""
    table = pq.ParquetDataset(str(directory)).read()
    rows = table.to_pylist()
    keyed = {(r["request_id"], r["row"]): r for r in rows}
    assert len(keyed) == len(rows), "a row is in the log twice"
    return keyed


def compact_once(directory) -> None:
    run = [sys.executable, "-m", "service.predlog.compactor", "--once", "--dir", str(directory)]
    assert subprocess.run(run, cwd=ROOT, timeout=300, capture_output=True).returncode == 0


class Sent:
    """Requests sent with their own X-Request-ID and W3C traceparent, and what each answered."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.answers: dict[str, tuple[str, list, object]] = {}  # request id -> (route, rows sent, answer)
        self.traces: dict[str, str] = {}  # request id -> the trace id its traceparent named

    def post(self, path: str, body, rows, headers: dict | None = None):
        rid, trace = uuid.uuid4().hex, uuid.uuid4().hex
        traceparent = f"00-{trace}-{uuid.uuid4().hex[:16]}-01"
        reply = self.client.request(
            "POST", path, body, headers={"X-Request-ID": rid, "traceparent": traceparent, **(headers or {})}
        )
        assert reply.status == 200, reply.raw[:300]
        assert reply.headers["X-Request-ID"] == rid
        self.answers[rid] = (path, rows, reply)
        self.traces[rid] = trace
        return reply


def access_lines(stack) -> dict[str, dict]:
    """nginx's access lines by request id."""
    text = (stack.logs / "nginx-access.log").read_text()
    return {line["request_id"]: line for line in map(json.loads, text[: text.rfind("\n") + 1].splitlines())}


def v2_binary(X: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A V2 inference request with its tensor as binary data (Triton's extension), and its headers."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP64",
                    "shape": [len(X), N_FEATURES],
                    "parameters": {"binary_data_size": len(X) * N_FEATURES * 8},
                }
            ],
            "outputs": [{"name": "probability", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + X.astype("<f8").tobytes(), headers


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("log-models")
    champion, challenger, _, _ = two_trained_models(base)
    store = RedisServer(free_port()).start()
    log_dir = tmp_path_factory.mktemp("prediction-log")
    stack = start_stack(
        champion,
        tmp_path_factory.mktemp("log-stack"),
        CHALLENGER_MODEL_PATH=str(challenger),
        FEATURE_STORE_URL=store.url,
        FEATURE_STORE_PREFIX=PREFIX,
        FEATURE_STORE_TIMEOUT_MS="1000",
        PREDICTION_LOG_DIR=str(log_dir),
        **UNLIMITED,
    )
    yield stack, store, log_dir, champion, challenger
    stack.stop()
    store.stop()


SCORING_ROUTES = (
    "/v1/fraud-score",
    "/v1/fraud-score/batch",
    "/v2/models/{name}/infer",
    "/v1/fraud-score/by-id",
    "/v1/fraud-score/by-id/batch",
)


def test_every_scoring_route_says_where_its_time_went(served):
    """Server-Timing on every scoring route's answer (as the app's stages: service/telemetry/stages.py),
    the same in nginx's access line, and each stage in the histogram by route."""
    stack, store, _, _, _ = served
    X, _ = synthetic.generate(20, seed=44)
    redis.Redis.from_url(store.url).mset({f"{PREFIX}timed-{i}": encode_record(row) for i, row in enumerate(X)})
    client = Client(stack.host, stack.port)
    sent = Sent(client)
    tensor = {"name": "features", "datatype": "FP64", "shape": [3, N_FEATURES], "data": X[:3].tolist()}
    binary, binary_headers = v2_binary(X[:3])
    requests = [
        ("/v1/fraud-score", as_transaction(X[0]), None),
        ("/v1/fraud-score?explain=true", as_transaction(X[1]), None),
        ("/v1/fraud-score/batch", {"transactions": [as_transaction(r) for r in X[:5]]}, None),
        ("/v1/fraud-score/batch", {"transactions": [{**as_transaction(X[0]), "transaction_id": "t"}]}, None),
        ("/v2/models/fraud/infer", {"inputs": [tensor]}, None),
        ("/v2/models/fraud/infer", binary, binary_headers),
        ("/v1/fraud-score/by-id", {"transaction_id": "timed-0"}, None),
        ("/v1/fraud-score/by-id/batch", {"transaction_ids": [f"timed-{i}" for i in range(5)]}, None),
    ]
    timings = {}
    for path, body, headers in requests:
        reply = sent.post(path, body, [], headers)
        timings[reply.headers["X-Request-ID"]] = (path, server_timing(reply.headers["Server-Timing"]))
    for path, stages in timings.values():
        expected = [stage for stage in STAGES if stage != "fetch" or "by-id" in path] + ["app"]
        assert list(stages) == expected, (path, stages)  # every stage, in order
        own = sum(ms for stage, ms in stages.items() if stage not in ("queue", "app"))
        assert own <= stages["app"] + 0.001 * len(stages), (path, stages)  # each rounded to a microsecond
        assert stages["score"] > 0 and stages["read"] > 0
    lines = wait_for(lambda: (found := access_lines(stack)).keys() >= timings.keys() and found)
    for rid, (_, stages) in timings.items():
        assert server_timing(lines[rid]["server_timing"]) == stages  # nginx logs what the client got
    found = samples(client)
    for route in SCORING_ROUTES:
        for stage in (stage for stage in STAGES if stage != "fetch" or "by-id" in route):
            assert value(found, "fraud_request_stage_seconds_count", route=route, stage=stage) >= 1, (route, stage)
            assert value(found, "fraud_request_stage_seconds_bucket", route=route, stage=stage, le="+Inf") >= 1
    # a refusal before any stage ended (no key) says nothing of stages
    refused = client.request("POST", "/v1/fraud-score", as_transaction(X[0]), key=None)
    assert refused.status == 403 and "Server-Timing" not in refused.headers


def test_every_route_logs_exactly_what_it_answered(served):
    stack, store, log_dir, champion, challenger = served
    X, _ = synthetic.generate(6000, seed=41)
    Xf, yf = synthetic.generate(40_000, seed=42)
    frauds = Xf[yf == 1][:200]
    X = np.vstack([frauds, X[: len(X) - len(frauds)]])  # flagged rows too
    X[205, FEATURES.index("Amount")] = 1e7  # an out-of-distribution row
    redis.Redis.from_url(store.url).mset({f"{PREFIX}tx-{i}": encode_record(row) for i, row in enumerate(X)})
    sent = Sent(Client(stack.host, stack.port))
    rows = iter(range(len(X)))
    taken = lambda n: [next(rows) for _ in range(n)]  # noqa: E731

    for i in taken(150):
        sent.post("/v1/fraud-score", {**as_transaction(X[i]), "transaction_id": f"v1-{i}"}, [i])
    for i in taken(100):
        sent.post("/v1/fraud-score?explain=true", as_transaction(X[i]), [i])
    for _ in range(2):
        chunk = taken(1000)
        sent.post("/v1/fraud-score/batch", {"transactions": [as_transaction(X[i]) for i in chunk]}, chunk)
    chunk = taken(500)
    items = [{**as_transaction(X[i]), **({"transaction_id": f"b-{i}"} if i % 2 else {})} for i in chunk]
    sent.post("/v1/fraud-score/batch", {"transactions": items}, chunk)
    chunk = taken(50)
    sent.post("/v1/fraud-score/batch?explain=true", {"transactions": [as_transaction(X[i]) for i in chunk]}, chunk)
    chunk = taken(700)
    v2 = {
        "id": "v2-json",
        "inputs": [
            {"name": "features", "datatype": "FP64", "shape": [len(chunk), N_FEATURES], "data": X[chunk].tolist()}
        ],
    }
    sent.post("/v2/models/fraud/infer", v2, chunk)
    chunk = taken(700)
    body, headers = v2_binary(X[chunk])
    sent.post("/v2/models/fraud/infer", body, chunk, headers)
    for i in taken(100):
        sent.post("/v1/fraud-score/by-id", {"transaction_id": f"tx-{i}"}, [i])
    chunk = taken(1000)
    sent.post("/v1/fraud-score/by-id/batch", {"transaction_ids": [f"tx-{i}" for i in chunk]}, chunk)
    chunk = taken(600)
    sent.post("/v1/fraud-score/by-id/batch?explain=true", {"transaction_ids": [f"tx-{i}" for i in chunk]}, chunk)

    stack.stop()  # SIGTERM: the workers seal their segments, the compactor's last pass takes them
    compact_once(log_dir)
    # this test's requests' rows (the module's other tests score on the same stack)
    logged = {key: record for key, record in read_log(log_dir).items() if key[0] in sent.answers}
    nginx = access_lines(stack)
    n = sum(len(rows) for _, rows, _ in sent.answers.values())
    assert len(logged) == n >= 5000
    routes = set()
    for rid, (path, rows, reply) in sent.answers.items():
        route = path.split("?")[0]
        v2_id = None
        if route.startswith("/v2/"):
            if reply.headers["Content-Type"] == "application/octet-stream":
                length = int(reply.headers["Inference-Header-Content-Length"])
                probability = np.frombuffer(reply.raw[length:], dtype="<f8").tolist()
                answers = [{"probability": p} for p in probability]
            else:
                outputs = {o["name"]: o["data"] for o in reply.json["outputs"]}
                v2_id = reply.json["id"]
                answers = [
                    {"probability": p, "fraud-score": s, "is-fraud": f}
                    for p, s, f in zip(outputs["probability"], outputs["fraud_score"], outputs["is_fraud"], strict=True)
                ]
        else:
            body = reply.json
            answers = body.get("results", [body])
        assert nginx[rid]["trace_id"] == sent.traces[rid]  # the caller's trace, in nginx's line
        for j, (i, answer) in enumerate(zip(rows, answers, strict=True)):
            record = logged[(rid, j)]
            assert record["trace_id"] == sent.traces[rid]  # ... and in the log's rows
            routes.add((record["route"], record["explained"]))
            assert [record[name] for name in FEATURES] == X[i].tolist()  # the features exactly as scored
            if "probability" in answer:
                assert record["probability"] == answer["probability"]
            if "fraud-score" in answer:
                assert (record["fraud_score"], record["is_fraud"]) == (answer["fraud-score"], answer["is-fraud"])
            if "ood-warning" in answer:
                assert record["ood_warning"] == answer["ood-warning"]
                assert record["ood_features"] == answer.get("ood-features", [])
            if "reasons" in answer:
                assert record["reasons"] == answer["reasons"] and record["explained"]
            expected_tid = answer.get("transaction_id") if not route.startswith("/v2/") else v2_id
            assert record["transaction_id"] == expected_tid
            assert record["model_version"] == "test-3" and record["challenger_version"] == "test-4"
            assert record["challenger_probability"] is not None and record["sample_weight"] == 1.0
            assert record["key_id"] == key_id(TEST_KEY.encode()) and TEST_KEY not in json.dumps(record, default=str)
    assert {route for route, _ in routes} == set(SCORING_ROUTES)
    assert any(r["ood_warning"] for r in logged.values()) and any(r["is_fraud"] for r in logged.values())
    # the logged features re-score to the logged probabilities, champion's and challenger's
    settings = from_mapping(
        {"API_KEY": "x" * 16, "MODEL_PATH": str(champion), "CHALLENGER_MODEL_PATH": str(challenger)}
    )
    result = verify_log.verify(log_dir, verify_log.models(settings, []))
    everything = len(read_log(log_dir))  # this test's rows and those of the tests before it on this stack
    assert (result.checked, result.mismatched, result.skipped) == (everything, 0, 0) and everything >= n
    assert (result.challenger_checked, result.challenger_mismatched) == (everything, 0)
    print(json.dumps(next(iter(logged.values())), default=str))


def test_a_worker_killed_under_load_loses_no_answered_row(small_model, tmp_path):
    log_dir = tmp_path / "log"
    stack = start_stack(small_model[0], tmp_path / "stack", WORKERS="3", PREDICTION_LOG_DIR=str(log_dir), **UNLIMITED)
    client = Client(stack.host, stack.port)
    X, _ = synthetic.generate(2000, seed=43)
    answered: dict[str, int] = {}  # request id -> rows, for every 200
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            n = int(rng.integers(1, 40))
            rows = X[rng.integers(0, len(X), n)]
            rid = uuid.uuid4().hex
            if n == 1:
                body, path = as_transaction(rows[0]), "/v1/fraud-score"
            else:
                body, path = {"transactions": [as_transaction(r) for r in rows]}, "/v1/fraud-score/batch"
            try:
                reply = client.request("POST", path, body, headers={"X-Request-ID": rid})
            except OSError:
                continue
            with lock:
                statuses.append(reply.status)
                if reply.status == 200:
                    answered[rid] = n

    master = stack.gunicorn.pid
    workers = wait_for(lambda: w if len(w := workers_of(master)) == 3 else None)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for seed in range(4):
            pool.submit(load, seed)
        wait_for(lambda: len(answered) >= 300, timeout=120)
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        before = len(answered)
        wait_for(lambda: len(answered) >= before + 300 and len(workers_of(master)) == 3, timeout=120)
        stop.set()
    # SIGTERM to the master: the workers seal their segments; then the launcher's compactor makes its
    # last pass, which also seals the killed worker's segment (its lock died with it).
    stack.stop()
    logged = read_log(log_dir)
    missing = [(rid, j) for rid, n in answered.items() for j in range(n) if (rid, j) not in logged]
    assert not missing, f"{len(missing)} answered rows are not in the log"
    assert not list((log_dir / "_spool").glob("*.open")) and not list((log_dir / "_spool").glob("*.seg"))
    # Besides 200: the killed worker's requests in flight (502), and requests shed on this busy machine
    # (503 deadline_exceeded); never an error of the app's own.
    assert set(statuses) <= {200, 502, 503}, sorted(set(statuses))


def test_a_full_spool_keeps_scoring_and_counts_its_drops(small_model, tmp_path):
    stack = start_stack(
        small_model[0],
        tmp_path / "stack",
        PREDICTION_LOG_DIR=str(tmp_path / "log"),
        PREDICTION_LOG_MAX_BYTES=str(1 << 20),
        PREDICTION_LOG_SEGMENT_BYTES=str(1 << 30),
        PREDICTION_LOG_SEGMENT_SECONDS="86400",  # nothing is sealed: the compactor cannot free the spool
        **UNLIMITED,
    )
    try:
        client = Client(stack.host, stack.port)
        X, _ = synthetic.generate(100, seed=44)
        body = {"transactions": [as_transaction(r) for r in X]}
        for _ in range(80):  # 8,000 rows: about 2.2 MB of records
            assert client.request("POST", "/v1/fraud-score/batch", body).status == 200
        found = samples(client)
        written = value(found, "fraud_prediction_log_records_total")
        dropped = value(found, "fraud_prediction_log_dropped_total", reason="spool_full")
        assert written + dropped == 8000 and dropped >= 4000
        assert client.request("GET", "/health").status == 200
        health = client.request("GET", "/health/prediction-log")
        assert health.status == 503 and "PREDICTION_LOG_MAX_BYTES" in health.json["problems"][0]
    finally:
        stack.stop()


def test_a_read_only_log_directory_keeps_scoring_and_counts_its_drops(small_model, tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    require_read_only_mounts(log_dir)
    stack = start_stack(
        small_model[0], tmp_path / "stack", read_only(log_dir), PREDICTION_LOG_DIR=str(log_dir), **UNLIMITED
    )
    try:
        client = Client(stack.host, stack.port)
        X, _ = synthetic.generate(20, seed=45)
        for row in X:
            assert client.score(as_transaction(row)).status == 200
        assert (
            client.request("POST", "/v1/fraud-score/batch", {"transactions": [as_transaction(r) for r in X]}).status
            == 200
        )
        found = samples(client)
        assert value(found, "fraud_prediction_log_dropped_total", reason="unwritable") == 40
        assert value(found, "fraud_prediction_log_records_total") == 0
        assert client.request("GET", "/health").status == 200
        health = client.request("GET", "/health/prediction-log")
        assert health.status == 503 and not health.json["writable"]
    finally:
        stack.stop()
