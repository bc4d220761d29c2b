"""Scoring by transaction id from a real redis-server, through real nginx and gunicorn: the same
answers as the raw-feature routes, every error, and a store that dies or hangs under load."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from openapi_spec_validator import validate

from model import synthetic
from service.core.features import FEATURES
from service.core.settings import Settings
from service.offline.feature_writer import CHUNK_ROWS, InputError, load
from service.store.feature_record import FORMAT_V1, encode_record
from stack.harness import EXTERNAL_SKIP_REASON, free_port
from stack.launcher import RedisServer, local_feature_store
from tests.helpers import (
    EXTERNAL,
    OTHER_KEY,
    UNLIMITED,
    Client,
    as_transaction,
    call_upstream,
    start_stack,
    wait_for,
)

# Each test here starts its own redis-server and stack with a feature store.
pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason=EXTERNAL_SKIP_REASON)

PREFIX = "test:tx:"
STORE_TIMEOUT_MS = "1000"
N_ROWS = 3000
BATCH_MAX = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    server = RedisServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rows():
    X, y = synthetic.generate(N_ROWS, seed=31)
    Xf, yf = synthetic.generate(60_000, seed=32)
    return np.vstack([X[: N_ROWS - 200], Xf[yf == 1][:200]])


@pytest.fixture(scope="module")
def loaded(store, rows, tmp_path_factory):
    """The rows written to the store by the writer (`make features`), ids tx-0 … tx-2999."""
    path = tmp_path_factory.mktemp("features") / "transactions.parquet"
    table = {"transaction_id": [f"tx-{i}" for i in range(len(rows))]}
    table.update({name: rows[:, j] for j, name in enumerate(FEATURES)})
    pq.write_table(pa.table(table), path)
    summary = load(path, redis.Redis.from_url(store.url), PREFIX, path.with_suffix(".rejects.csv"), progress=False)
    assert (summary.rows, summary.written, summary.rejected) == (len(rows), len(rows), 0)
    return [f"tx-{i}" for i in range(len(rows))]


@pytest.fixture(scope="module")
def stack(small_model, store, tmp_path_factory):
    running = start_stack(
        small_model[0],
        tmp_path_factory.mktemp("by-id-logs"),
        FEATURE_STORE_URL=store.url,
        FEATURE_STORE_PREFIX=PREFIX,
        # Generous: a test machine busy with the rest of the suite must not turn a slow moment into a
        # 503; the timeout itself is tested with a stopped store below.
        FEATURE_STORE_TIMEOUT_MS=STORE_TIMEOUT_MS,
        BATCH_MAX=str(BATCH_MAX),
        **UNLIMITED,  # thousands of rows from one key in a few seconds
    )
    yield running
    running.stop()


def by_id(client: Client, transaction_id, query: str = ""):
    return client.request("POST", f"/v1/fraud-score/by-id{query}", {"transaction_id": transaction_id})


def by_ids(client: Client, ids, query: str = ""):
    return client.request("POST", f"/v1/fraud-score/by-id/batch{query}", {"transaction_ids": ids})


def test_the_master_never_connects_each_worker_has_its_own_connection(stack, store, loaded):
    admin = redis.Redis.from_url(store.url)
    before = {c["id"] for c in admin.client_list()}
    assert len(before) == 1  # this test's own connection: the master made none before fork
    client = Client("127.0.0.1", stack.settings.port)
    for _ in range(40):
        assert by_id(client, "tx-1").status == 200
    workers = [c for c in admin.client_list() if c["id"] not in before]
    assert 1 <= len(workers) <= 2 and len({c["addr"] for c in workers}) == len(workers)


def test_by_id_equals_the_raw_feature_routes_for_thousands_of_ids(stack, loaded, rows, small_model):
    client = Client("127.0.0.1", stack.settings.port)
    estimator = small_model[1]
    expected_scores = [round(100 * p) for p in estimator.predict_proba(rows)[:, 1]]
    for start in range(0, len(loaded), BATCH_MAX):
        ids = loaded[start : start + BATCH_MAX]
        stored = by_ids(client, ids)
        raw = client.request(
            "POST",
            "/v1/fraud-score/batch",
            {"transactions": [as_transaction(r) for r in rows[start : start + BATCH_MAX]]},
        )
        assert stored.status == raw.status == 200, stored.raw
        results = stored.json["results"]
        assert [r.pop("transaction_id") for r in results] == ids
        assert results == raw.json["results"]
        assert [r["fraud-score"] for r in results] == expected_scores[start : start + BATCH_MAX]
    assert sum(expected_scores) > 0  # the frauds at the end score high: the comparison is not all zeros
    for i in (0, 1, 2, len(rows) - 1, len(rows) - 2):
        one = by_id(client, f"tx-{i}", "?explain=true")
        raw = client.request("POST", "/v1/fraud-score?explain=true", as_transaction(rows[i]))
        body = one.json
        assert one.status == 200 and body.pop("transaction_id") == f"tx-{i}"
        assert body == raw.json


def test_by_id_batch_with_reasons_equals_the_raw_batch_with_reasons(stack, loaded, rows):
    """?explain=true on the batch twin: the same reasons (values, contributions, order), OOD flags
    included, as the raw batch gives for the same features; frauds and ordinary rows alike."""
    client = Client("127.0.0.1", stack.settings.port)
    picked = [*range(0, 150), *range(len(rows) - 50, len(rows))]
    stored = by_ids(client, [loaded[i] for i in picked], "?explain=true")
    raw = client.request(
        "POST", "/v1/fraud-score/batch?explain=true", {"transactions": [as_transaction(rows[i]) for i in picked]}
    )
    assert stored.status == raw.status == 200, stored.raw
    results = stored.json["results"]
    assert [r.pop("transaction_id") for r in results] == [loaded[i] for i in picked]
    assert results == raw.json["results"]
    assert all(r["reasons"] for r in results) and any(r["ood-warning"] for r in results)


def test_unknown_ids_are_404_naming_them(stack, loaded):
    client = Client("127.0.0.1", stack.settings.port)
    reply = by_id(client, "no-such-tx")
    assert reply.status == 404 and reply.json["error"] == "unknown_transaction"
    assert "'no-such-tx'" in reply.json["message"]
    reply = by_ids(client, ["tx-1", "missing-a", "tx-2", "missing-b"])
    assert reply.status == 404
    assert "'missing-a'" in reply.json["message"] and "'missing-b'" in reply.json["message"]


def test_bad_records_are_422_naming_the_id(stack, store, loaded):
    admin = redis.Redis.from_url(store.url)
    good = list(np.zeros(len(FEATURES)))
    admin.set(PREFIX + "future-format", bytes([FORMAT_V1 + 1]) + encode_record(good)[1:])
    admin.set(PREFIX + "truncated", encode_record(good)[:-8])
    admin.set(PREFIX + "not-finite", encode_record([*good[:3], float("nan"), *good[4:]]))
    admin.set(PREFIX + "too-large", encode_record([*good[:-1], 1e300]))
    client = Client("127.0.0.1", stack.settings.port)
    for transaction_id, says in (
        ("future-format", "format"),
        ("truncated", "format"),
        ("not-finite", "V3"),
        ("too-large", "Amount"),
    ):
        for reply in (by_id(client, transaction_id), by_ids(client, ["tx-1", transaction_id, "tx-2"])):
            assert reply.status == 422, (transaction_id, reply.raw)
            assert reply.json["error"] == "invalid_record"
            assert repr(transaction_id) in reply.json["message"] and says in reply.json["message"]


def test_a_key_holding_another_redis_type_is_422_naming_the_id_not_a_retry(stack, store, loaded):
    """Something else under the prefix (a hash of fields, a list): a record in a format this
    service does not know, as for the single GET so for the batch's MGET (which reads it as nil),
    never a 503 that a retry cannot cure nor a 404 that hides it."""
    admin = redis.Redis.from_url(store.url)
    admin.hset(PREFIX + "a-hash", mapping=dict.fromkeys(FEATURES, "0.5"))
    admin.rpush(PREFIX + "a-list", "x")
    client = Client("127.0.0.1", stack.settings.port)
    for transaction_id, kind in (("a-hash", "hash"), ("a-list", "list")):
        for reply in (by_id(client, transaction_id), by_ids(client, ["tx-1", transaction_id, "tx-2"])):
            assert reply.status == 422, (transaction_id, reply.raw)
            assert reply.json["error"] == "invalid_record"
            assert repr(transaction_id) in reply.json["message"] and kind in reply.json["message"], reply.json
    reply = by_ids(client, ["a-hash", "no-such-tx"])  # an unknown id is still named as unknown
    assert reply.status == 404 and "'no-such-tx'" in reply.json["message"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/fraud-score/by-id", {}, 422),
        ("/v1/fraud-score/by-id", {"transaction_id": 7}, 422),
        ("/v1/fraud-score/by-id", {"transaction_id": ""}, 422),
        ("/v1/fraud-score/by-id", "[]", 422),
        ("/v1/fraud-score/by-id", "not json", 400),
        ("/v1/fraud-score/by-id/batch", {"transaction_ids": []}, 422),
        ("/v1/fraud-score/by-id/batch", {"transaction_ids": ["a", 3]}, 422),
        ("/v1/fraud-score/by-id/batch", {"transaction_ids": ["a"] * (BATCH_MAX + 1)}, 413),
    ],
)
def test_malformed_requests_are_4xx_with_json(stack, path, body, status):
    client = Client("127.0.0.1", stack.settings.port)
    reply = client.request("POST", path, body)
    assert reply.status == status, reply.raw
    assert reply.json["message"]


def test_a_bad_id_in_a_batch_is_named_by_its_place_in_transaction_ids(stack):
    reply = by_ids(Client("127.0.0.1", stack.settings.port), ["a", 3])
    assert reply.status == 422
    assert reply.json["message"] == "transaction_ids[1] must be a string, got integer", reply.json


def test_key_required(stack, loaded):
    reply = Client("127.0.0.1", stack.settings.port, key=None).request(
        "POST", "/v1/fraud-score/by-id", {"transaction_id": "tx-1"}
    )
    assert reply.status == 403


def test_store_status_route(stack, loaded):
    reply = Client("127.0.0.1", stack.settings.port).request("GET", "/health/feature-store")
    assert reply.status == 200 and reply.json["reachable"] is True
    assert isinstance(reply.json["within_timeout"], bool)  # a busy host may answer a PING slowly
    assert reply.json["prefix"] == PREFIX and reply.json["timeout_ms"] == int(STORE_TIMEOUT_MS)


def test_without_a_model_the_store_status_still_answers(store, tmp_path):
    """Started degraded (no model yet): the by-id routes are 503 like the raw ones, and whether
    the store answers is still there to see (it does not depend on the model)."""
    running = start_stack(tmp_path / "none" / "fraud-model.joblib", tmp_path / "logs", FEATURE_STORE_URL=store.url)
    try:
        client = Client("127.0.0.1", running.settings.port)
        status = client.request("GET", "/health/feature-store")
        assert status.status == 200 and status.json["reachable"] is True, status.raw
        assert by_id(client, "tx-1").status == 503
    finally:
        running.stop()


def test_without_a_store_the_routes_do_not_exist(stack_factory):
    client = Client("127.0.0.1", stack_factory().settings.port)
    assert client.request("POST", "/v1/fraud-score/by-id", {"transaction_id": "x"}).status == 404
    assert client.request("GET", "/health/feature-store").status == 404


def hammer(client: Client, stop: threading.Event, seen: list[tuple[int, str | None]]) -> None:
    """by-id requests in a loop until `stop` is set: (status, error code) each, appended to `seen`."""
    while not stop.is_set():
        reply = by_id(client, "tx-7")
        seen.append((reply.status, reply.json.get("error")))


def waiting_on(port: int) -> bool:
    """Whether a command sent to the (stopped) server on this loopback port waits unread in a live
    connection's receive queue: a request is then blocked on the store. (/proc/net/tcp: the local
    address, the state 01 = established, and the receive queue, in hex.)"""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01" and int(fields[4].split(":")[1], 16):
            return True
    return False


def test_store_killed_under_load_then_back_without_restarting_the_service(small_model, tmp_path, rows):
    server = RedisServer(free_port()).start()
    try:
        redis.Redis.from_url(server.url).set(PREFIX + "tx-7", encode_record(list(rows[7])))
        running = start_stack(
            small_model[0],
            tmp_path / "logs",
            FEATURE_STORE_URL=server.url,
            FEATURE_STORE_PREFIX=PREFIX,
            FEATURE_STORE_TIMEOUT_MS=STORE_TIMEOUT_MS,  # a dead store refuses connections at once
            **UNLIMITED,
        )
        try:
            client = Client("127.0.0.1", running.settings.port)
            stop, seen = threading.Event(), []
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                loads = [pool.submit(hammer, client, stop, seen) for _ in range(4)]
                wait_for(lambda: (200, None) in seen)  # the load is served
                server.stop()  # SIGTERM: the store goes away mid-load
                wait_for(lambda: (503, "feature_store_unavailable") in seen)
                stop.set()
                for load in loads:
                    load.result()
            statuses = {status for status, _ in seen}
            assert statuses <= {200, 503}, statuses
            assert 200 in statuses and 503 in statuses
            # While the store is gone, requests queued behind workers waiting on it may spend their
            # deadline (service/api/deadline.py) before a worker picks them up: also a documented 503.
            errors = {error for status, error in seen if status == 503}
            assert "feature_store_unavailable" in errors and errors <= {
                "feature_store_unavailable",
                "deadline_exceeded",
            }
            down = by_id(client, "tx-7")
            assert down.status == 503 and down.headers["Retry-After"]
            assert client.score(as_transaction(rows[7])).status == 200  # the rest keeps serving
            assert client.request("GET", "/health").status == 200
            assert client.request("GET", "/health/feature-store").status == 503

            server = RedisServer(server.port).start()  # back, empty: the pipeline writes again
            redis.Redis.from_url(server.url).set(PREFIX + "tx-7", encode_record(list(rows[7])))
            assert [by_id(client, "tx-7").status for _ in range(10)] == [200] * 10
        finally:
            running.stop()
    finally:
        server.stop()


def test_a_store_slower_than_the_timeout_is_503_never_a_hung_worker(small_model, tmp_path, rows):
    server = RedisServer(free_port()).start()
    try:
        redis.Redis.from_url(server.url).set(PREFIX + "tx-7", encode_record(list(rows[7])))
        running = start_stack(
            small_model[0],
            tmp_path / "logs",
            FEATURE_STORE_URL=server.url,
            FEATURE_STORE_PREFIX=PREFIX,
            # Short enough that the stalled phase is quick, long enough that a busy machine's first
            # connection (made on a worker's first lookup) and lookups keep inside it.
            FEATURE_STORE_TIMEOUT_MS="100",
            **UNLIMITED,
        )
        try:
            client = Client("127.0.0.1", running.settings.port)
            assert by_id(client, "tx-7").status == 200
            os.kill(server.process.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
            try:
                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    replies = list(pool.map(lambda _: by_id(client, "tx-7"), range(40)))
                # Every one answered by the service for its store's timeout: none hung until nginx's
                # proxy timeout (a 504) or its own deadline (503 deadline_exceeded).
                assert {(r.status, r.json["error"]) for r in replies} == {(503, "feature_store_unavailable")}
                assert client.score(as_transaction(rows[7])).status == 200
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            wait_for(lambda: by_id(client, "tx-7").status == 200)  # recovered, not restarted
        finally:
            running.stop()
    finally:
        server.stop()


def test_a_store_on_a_unix_socket_scores_the_same_and_times_out_the_same(small_model, tmp_path, rows):
    """FEATURE_STORE_URL=unix://…: a store beside the service, reached without TCP. The same answers
    as the raw routes, one connection per worker made after fork, and a stalled store is a 503
    within the timeout, then recovery without restarting the service."""
    server = RedisServer(free_port(), unix_socket=tmp_path / "redis.sock").start()
    try:
        admin = redis.Redis.from_url(server.unix_url)
        with admin.pipeline(transaction=False) as pipe:
            for i in range(300):
                pipe.set(f"{PREFIX}u-{i}", encode_record(list(rows[i])))
            pipe.execute()
        running = start_stack(
            small_model[0],
            tmp_path / "logs",
            FEATURE_STORE_URL=server.unix_url,
            FEATURE_STORE_PREFIX=PREFIX,
            FEATURE_STORE_TIMEOUT_MS="100",  # under the 150 ms deadline, as a busy machine needs
            **UNLIMITED,
        )
        try:
            client = Client("127.0.0.1", running.settings.port)
            before = {c["id"] for c in admin.client_list()}
            assert len(before) == 1  # this test's own: the master made none
            ids = [f"u-{i}" for i in range(300)]
            stored = by_ids(client, ids)
            raw = client.request(
                "POST", "/v1/fraud-score/batch", {"transactions": [as_transaction(r) for r in rows[:300]]}
            )
            assert stored.status == raw.status == 200, stored.raw
            results = stored.json["results"]
            assert [r.pop("transaction_id") for r in results] == ids
            assert results == raw.json["results"]
            for i in range(0, 300, 37):
                one = by_id(client, f"u-{i}")
                body = one.json
                assert one.status == 200 and body.pop("transaction_id") == f"u-{i}"
                assert body == client.score(as_transaction(rows[i])).json
            workers = [c for c in admin.client_list() if c["id"] not in before]
            assert 1 <= len(workers) <= running.settings.workers

            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                down = by_id(client, "u-1")  # the store's timeout's answer, not nginx's 504 after 10 s
                assert down.status == 503 and down.json["error"] == "feature_store_unavailable"
                assert client.score(as_transaction(rows[1])).status == 200
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            wait_for(lambda: by_id(client, "u-1").status == 200)
        finally:
            running.stop()
    finally:
        server.stop()


def test_the_store_lookup_waits_no_longer_than_the_requests_deadline(small_model, tmp_path, rows):
    """FEATURE_STORE_TIMEOUT_MS is 1 s here: a request with 30 ms of budget gives up on a stalled
    store within its budget (503 feature_store_unavailable), while one without a deadline (no
    nginx stamp) outwaits the same stall and is scored."""
    server = RedisServer(free_port()).start()
    try:
        redis.Redis.from_url(server.url).set(PREFIX + "tx-7", encode_record(list(rows[7])))
        running = start_stack(
            small_model[0],
            tmp_path / "logs",
            FEATURE_STORE_URL=server.url,
            FEATURE_STORE_PREFIX=PREFIX,
            FEATURE_STORE_TIMEOUT_MS="1000",
            WORKERS="1",  # one worker, one connection to the store: each call below meets the stall
        )
        try:
            body = json.dumps({"transaction_id": "tx-7"}).encode()
            assert call_upstream(running.socket, "POST", "/v1/fraud-score/by-id", None, body)[0] == 200
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                in_future = time.time() + 5  # a stamp ahead counts as no queue wait: all 30 ms are the lookup's
                status, _, answer = call_upstream(
                    running.socket, "POST", "/v1/fraud-score/by-id", in_future, body, **{"X-Deadline-Ms": "30"}
                )
                assert status == 503 and json.loads(answer)["error"] == "feature_store_unavailable", answer
                # The store resumes once this request's lookup waits on it: it is scored.
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    pending = pool.submit(call_upstream, running.socket, "POST", "/v1/fraud-score/by-id", None, body)
                    wait_for(lambda: waiting_on(server.port) or pending.done())
                    os.kill(server.process.pid, signal.SIGCONT)
                    status, _, answer = pending.result()
                assert status == 200, answer
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
        finally:
            running.stop()
    finally:
        server.stop()


def test_writer_rejects_bad_rows_and_stops_on_a_bad_header(store, tmp_path):
    good = ",".join(["1.5"] * len(FEATURES))
    lines = [
        "transaction_id," + ",".join(FEATURES) + ",Class",
        f"ok-1,{good},0",
        "bad-text," + ",".join(["1.5"] * 3 + ["abc"] + ["1.5"] * (len(FEATURES) - 4)) + ",0",
        "bad-empty," + ",".join(["1.5"] * (len(FEATURES) - 1) + [""]) + ",0",
        "bad-inf," + ",".join(["inf"] + ["1.5"] * (len(FEATURES) - 1)) + ",0",
        f",{good},0",
        "bad-nan," + ",".join(["1.5"] * 5 + ["nan"] + ["1.5"] * (len(FEATURES) - 6)) + ",0",
        "bad-big," + ",".join(["1.5"] * 7 + ["3.5e38"] + ["1.5"] * (len(FEATURES) - 8)) + ",0",
        f"ok-2,{good},1",
    ]
    path = tmp_path / "in.csv"
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.csv"
    client = redis.Redis.from_url(store.url)
    summary = load(path, client, "writer:", rejects, progress=False)
    assert (summary.rows, summary.written, summary.rejected) == (8, 2, 6)
    rejected = rejects.read_text().splitlines()
    assert rejected[0] == "row,transaction_id,reason"
    assert rejected[1].startswith("2,bad-text,") and "V3 is not a number: 'abc'" in rejected[1]
    assert rejected[2].startswith("3,bad-empty,") and "Amount is missing" in rejected[2]
    assert rejected[3].startswith("4,bad-inf,") and "Time is not a finite number" in rejected[3]
    assert rejected[4].startswith("5,,")
    assert rejected[5].startswith("6,bad-nan,") and "V5 is not a finite number" in rejected[5]
    assert rejected[6].startswith("7,bad-big,") and "V7 is beyond the float32 range" in rejected[6]
    assert client.get("writer:ok-1") == encode_record([1.5] * len(FEATURES))
    assert client.get("writer:bad-text") is None and client.get("writer:bad-nan") is None

    (tmp_path / "no-id.csv").write_text(",".join(FEATURES) + "\n" + good + "\n")
    with pytest.raises(InputError, match="missing columns transaction_id"):
        load(tmp_path / "no-id.csv", client, "writer:", rejects, progress=False)
    with pytest.raises(InputError, match="cannot read"):
        load(tmp_path / "absent.csv", client, "writer:", rejects, progress=False)


def test_writer_refuses_ids_the_by_id_routes_cannot_ask_for(store, tmp_path):
    """The routes take ids of 1 to 256 characters: a longer one would be stored and never read."""
    longest, too_long = "L" * 256, "X" * 257
    good = ",".join(["0.5"] * len(FEATURES))
    path = tmp_path / "in.csv"
    path.write_text(f"transaction_id,{','.join(FEATURES)}\n{longest},{good}\n{too_long},{good}\n")
    client = redis.Redis.from_url(store.url)
    summary = load(path, client, "long:", tmp_path / "rejects.csv", progress=False)
    assert (summary.rows, summary.written, summary.rejected) == (2, 1, 1)
    rejected = (tmp_path / "rejects.csv").read_text().splitlines()
    assert rejected[1] == f"2,{too_long},transaction_id is longer than 256 characters"
    assert client.get("long:" + longest) is not None and client.get("long:" + too_long) is None


def test_writer_refuses_parquet_rows_the_service_would_refuse_numbering_rows_across_chunks(store, tmp_path):
    """A double column can hold NaN and infinities, which no JSON request can: refused, never
    stored; row numbers count from the file's first row whatever chunk a row is read in."""
    n = CHUNK_ROWS + 10
    table = {"transaction_id": [f"pq-{i}" for i in range(n)]}
    table.update({name: np.full(n, 0.25) for name in FEATURES})
    table["V2"][3] = np.nan
    table["Amount"][CHUNK_ROWS + 4] = np.inf
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table(table), path)
    client = redis.Redis.from_url(store.url)
    summary = load(path, client, "pq:", tmp_path / "rejects.csv", progress=False)
    assert (summary.rows, summary.written, summary.rejected) == (n, n - 2, 2)
    rejected = (tmp_path / "rejects.csv").read_text().splitlines()[1:]
    assert rejected[0].startswith("4,pq-3,") and "V2" in rejected[0]
    assert rejected[1].startswith(f"{CHUNK_ROWS + 5},pq-{CHUNK_ROWS + 4},") and "Amount" in rejected[1]
    assert client.get("pq:pq-3") is None and client.get(f"pq:pq-{n - 1}") == encode_record([0.25] * len(FEATURES))


def test_writer_stops_on_bytes_that_are_not_utf8_naming_the_files_row(store, tmp_path):
    good = ",".join(["0.5"] * len(FEATURES))
    lines = [f"transaction_id,{','.join(FEATURES)}".encode()]
    lines += [f"u-{i},{good}".encode() for i in range(CHUNK_ROWS + 100)]
    lines[CHUNK_ROWS + 50] = b"u-\xff," + good.encode()  # data row CHUNK_ROWS + 50, in the second chunk
    path = tmp_path / "in.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError, match=f"row {CHUNK_ROWS + 50}:"):
        load(path, redis.Redis.from_url(store.url), "utf8:", tmp_path / "r.csv", progress=False)


def test_writer_ttl_expires_records(store, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("transaction_id," + ",".join(FEATURES) + "\nttl-1," + ",".join(["0"] * len(FEATURES)) + "\n")
    client = redis.Redis.from_url(store.url)
    load(path, client, "ttl:", tmp_path / "r.csv", ttl=100, progress=False)
    assert 0 < client.ttl("ttl:ttl-1") <= 100


def test_openapi_describes_the_by_id_routes_when_a_store_is_configured(stack):

    document = Client("127.0.0.1", stack.settings.port).request("GET", "/openapi.json").json
    validate(document)
    assert {"/v1/fraud-score/by-id", "/v1/fraud-score/by-id/batch", "/health/feature-store"} <= set(document["paths"])
    assert (
        document["components"]["schemas"]["TransactionIdBatch"]["properties"]["transaction_ids"]["maxItems"]
        == BATCH_MAX
    )


def test_by_id_routes_spend_the_callers_row_budget(small_model, store, loaded, tmp_path):
    """Five rows a second with a burst of five: a 50-id batch passes and leaves the key 45 rows (nine
    seconds) in debt, so single by-id requests from that key are refused with the budget's 429 however
    slow the machine, and another key is not."""
    running = start_stack(
        small_model[0],
        tmp_path / "logs",
        FEATURE_STORE_URL=store.url,
        FEATURE_STORE_PREFIX=PREFIX,
        FEATURE_STORE_TIMEOUT_MS=STORE_TIMEOUT_MS,
        RATE_LIMIT_PER_KEY="5",
        RATE_LIMIT_BURST="5",
    )
    try:
        client = Client("127.0.0.1", running.settings.port)
        assert by_ids(client, loaded[:50]).status == 200
        refused = by_id(client, "tx-1")
        assert refused.status == 429 and refused.json["error"] == "rate_limited" and refused.headers["Retry-After"]
        # A batch body that is not JSON costs a row too: refused by the budget, not worked on.
        not_json = client.request("POST", "/v1/fraud-score/by-id/batch", '{"transaction_ids": [')
        assert not_json.status == 429 and "transactions per second" in not_json.json["message"], not_json.raw
        other = Client("127.0.0.1", running.settings.port, key=OTHER_KEY)
        assert by_id(other, "tx-1").status == 200
    finally:
        running.stop()


def store_settings(url: str, start: bool = True) -> Settings:
    return Settings(api_keys=(b"k" * 24,), feature_store_url=url, feature_store_start=start)


def test_make_run_starts_a_local_store_on_a_loopback_port_or_a_unix_socket(tmp_path):
    port = free_port()
    for url in (f"redis://127.0.0.1:{port}/0", f"unix://{tmp_path}/run.sock?db=0"):
        server = local_feature_store(store_settings(url), tmp_path / "data")
        try:
            assert redis.Redis.from_url(url).ping()
        finally:
            server.stop()
    assert local_feature_store(store_settings(f"redis://127.0.0.1:{port}/0", start=False), tmp_path) is None
    with pytest.raises(RuntimeError, match="FEATURE_STORE_START needs"):
        local_feature_store(store_settings("redis://10.0.0.1:6379/0"), tmp_path)
