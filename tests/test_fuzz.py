"""Fuzzing through real nginx and workers: generated requests, valid and invalid, never get a 5xx,
and the service is healthy afterwards; and the outsider's run: `schemathesis run --checks all`
against the service's own /openapi.json finds nothing the document does not say.

schemathesis generates the requests from an OpenAPI description: the service's own /openapi.json
when it serves one, otherwise one built here around service/contract/schemas/transaction.schema.json (the
same document the service validates with). Raw hostile bytes come from hypothesis directly.

`make test` runs a quick pass; `make fuzz` runs FUZZ_EXAMPLES (default 5000) of each kind."""

from __future__ import annotations

import base64
import collections
import http.client
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import falcon
import falcon.testing
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from service.api.deadline import SPENT, Deadlines, InvalidDeadline, budget_ms
from service.contract.schema import load_schema_document
from service.core.settings import DEADLINE_MAX_MS
from tests.helpers import TEST_KEY, UNLIMITED, is_deadline_answer, start_stack

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, derandomize=False, suppress_health_check=list(HealthCheck)
)


def openapi_document() -> dict:
    """A minimal OpenAPI 3.1 description of the scoring endpoint, around the transaction schema."""
    transaction = {k: v for k, v in load_schema_document().items() if k not in ("$schema", "$id")}
    error = {"description": "error", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "fraud scoring", "version": "1"},
        "paths": {
            "/v1/fraud-score": {
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {"schema": transaction}}},
                    "responses": {"200": {"description": "scored"}, "422": error, "400": error, "403": error},
                }
            },
            "/health": {"get": {"responses": {"200": {"description": "healthy"}}}},
        },
    }


class Scored:
    def on_post(self, req, resp, **params):
        resp.media = {"scored": True}


def deadline_answer(path: str):
    """The deadline guard's own answer for a request on `path` that waited 10 s of a 5 ms budget."""
    app = falcon.App()
    app.add_route("/v1/fraud-score", Scored())
    app.add_route("/v2/models/{name}/infer", Scored())
    guarded = Deadlines(app, 150, lambda route, seconds: None, lambda route: None)
    headers = {"X-Request-Start": f"{time.time() - 10:.3f}", "X-Deadline-Ms": "5"}
    return falcon.testing.simulate_request(guarded, "POST", path, headers=headers, body=b"{}")


@pytest.mark.parametrize("path", ["/v1/fraud-score", "/v2/models/fraud/infer", "/v2/models/fraud/infer?x=1"])
def test_the_deadline_answer_is_recognised_in_each_routes_shape(path):
    answer = deadline_answer(path)
    assert answer.status_code == 503
    assert is_deadline_answer(path, answer.status_code, answer.headers.get("Retry-After"), answer.content)


SPENT_9_OF_5 = SPENT.format(waited_ms=9, budget=5)
V1_SPENT = json.dumps({"error": "deadline_exceeded", "message": SPENT_9_OF_5}).encode()
V2_SPENT = json.dumps({"error": SPENT_9_OF_5}).encode()


@pytest.mark.parametrize(
    "path, status, retry_after, body",
    [
        # nginx's own 503s (the workers' queue full, no worker reachable) in either shape
        (
            "/v1/fraud-score",
            503,
            "1",
            b'{"error":"unavailable","message":"the scoring workers are busy; retry shortly"}',
        ),
        ("/v2/models/fraud/infer", 503, "1", b'{"error":"the scoring workers are busy; retry shortly"}'),
        ("/v1/fraud-score", 503, "30", b'{"error":"model_unavailable","message":"no model is loaded: x"}'),
        # the deadline's message, but not as the service answers it
        ("/v1/fraud-score", 500, "1", V1_SPENT),
        ("/v1/fraud-score", 503, None, V1_SPENT),
        ("/v2/models/fraud/infer", 503, "1", V1_SPENT),
        ("/v1/fraud-score", 503, "1", V2_SPENT),
        ("/v1/fraud-score", 503, "1", b'{"error":"deadline_exceeded","message":"deadline_exceeded"}'),
        ("/v2/models/fraud/infer", 503, "1", b"deadline_exceeded"),
    ],
)
def test_no_other_answer_passes_for_the_deadline_answer(path, status, retry_after, body):
    assert not is_deadline_answer(path, status, retry_after, body)


def load_api_schema(base_url: str):
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/openapi.json")
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    document = json.loads(body) if reply.status == 200 else openapi_document()
    return schemathesis.openapi.from_dict(document)


@pytest.fixture(scope="module")
def fuzz_stack(small_model, tmp_path_factory):
    # Limits out of the way: the fuzzer sends thousands of requests from one address and key. The
    # stack's default budget is the longest a client may ask for (start_stack), so that on a busy
    # machine only a budget a generated request set itself can be spent in the queue.
    running = start_stack(small_model[0], tmp_path_factory.mktemp("fuzz-logs"), **UNLIMITED)
    yield running
    running.stop()


def assert_clean_run(stack, statuses: collections.Counter, label: str) -> None:
    host, port = "127.0.0.1", stack.settings.port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
    assert not [s for s in statuses if s >= 500], statuses
    print(
        f"\nfuzz {label}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}, "
        f"5xx: 0, healthy afterwards"
    )


def test_schemathesis_cases_never_get_a_5xx(fuzz_stack):
    schema = load_api_schema(fuzz_stack.base_url)
    cases = st.one_of(
        *(
            op.ok().as_strategy(mode)
            for op in schema.get_all_operations()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        )
    )
    statuses: collections.Counter = collections.Counter()

    @FUZZ_SETTINGS
    @given(case=cases, with_key=st.sampled_from([True, True, True, False]))
    def run(case, with_key):
        headers = {"X-API-Key": TEST_KEY} if with_key else {}
        response = case.call(base_url=fuzz_stack.base_url, headers=headers, timeout=10)
        # A designed answer, not a fault (and not counted as a 5xx).
        retry_after = response.headers.get("retry-after", [None])[0]  # schemathesis: lower-case names, lists
        late = is_deadline_answer(response.request.path_url, response.status_code, retry_after, response.content)
        if not late:
            statuses[response.status_code] += 1
        assert response.status_code < 500 or late, (case.method, case.path, case.body, response.text[:300])
        if response.status_code >= 400 and case.method != "HEAD":
            assert "error" in response.json(), response.text[:300]

    run()
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0, statuses
    assert_clean_run(fuzz_stack, statuses, "schemathesis")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)


@st.composite
def hostile_requests(draw):
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "OPTIONS", "PATCH"]))
    path = draw(
        st.sampled_from(
            [
                "/v1/fraud-score",
                "/v1/fraud-score/",
                "/health",
                "/v1/fraud-score?x=1",
                "/metrics",
                "/v1//fraud-score",
                "/%2e%2e/etc/passwd",
            ]
        )
    )
    body = draw(
        st.one_of(
            st.binary(max_size=2000),
            JSONISH.map(lambda v: json.dumps(v).encode()),
            st.dictionaries(st.sampled_from(["Time", "V1", "V14", "Amount", "x"]), JSONISH, max_size=5).map(
                lambda v: json.dumps(v).encode()
            ),
        )
    )
    content_type = draw(
        st.sampled_from(
            [
                None,
                "application/json",
                "text/plain",
                "application/problem+json",
                "application/json; charset=latin-1",
                "multipart/form-data",
            ]
        )
    )
    key = draw(st.sampled_from([TEST_KEY, None, "", "x" * 300, TEST_KEY + "\t"]))
    return method, path, body, content_type, key


def test_raw_hostile_requests_never_get_a_5xx(fuzz_stack):
    statuses: collections.Counter = collections.Counter()

    @FUZZ_SETTINGS
    @given(request=hostile_requests())
    def run(request):
        method, path, body, content_type, key = request
        headers = {"Content-Type": content_type} if content_type else {}
        if key is not None:
            headers["X-API-Key"] = key
        conn = http.client.HTTPConnection("127.0.0.1", fuzz_stack.settings.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            raw = reply.read()
        finally:
            conn.close()
        if is_deadline_answer(path, reply.status, reply.getheader("Retry-After"), raw):
            return  # the default budget, spent in the queue of a busy machine: a designed answer
        statuses[reply.status] += 1
        assert reply.status < 500, (method, path, body[:200], raw[:300])
        if reply.status >= 400:
            assert reply.getheader("Content-Type", "").startswith("application/json"), raw[:300]
            assert "error" in json.loads(raw), raw[:300]

    run()
    assert_clean_run(fuzz_stack, statuses, "raw hostile")


# The outsider's run, with every check. With the fixed seed, every phase (examples, coverage,
# fuzzing, stateful); with a random one, printed for replay (CONFORMANCE_SEED=N), the phases that
# draw at random (fuzzing, stateful). CONFORMANCE_EXAMPLES cases at most per operation in the
# fuzzing phase, 10 scenarios of up to 4 calls in the stateful one: about 1,500 and 260 cases, which
# took 41 s and 36 s on 2 cores under a load average of about 10, 135 s and 50 s under about 20.
CONFORMANCE_EXAMPLES = int(os.environ.get("CONFORMANCE_EXAMPLES", "20"))
FIXED_SEED = 20261207
RANDOM_SEED = int(os.environ.get("CONFORMANCE_SEED") or random.SystemRandom().randrange(2**31))
RUNS = {
    "fixed-seed": (FIXED_SEED, "examples,coverage,fuzzing,stateful"),
    "random-seed": (RANDOM_SEED, "fuzzing,stateful"),
}
# The one answer allowed to fail a check: a budget the client set (X-Deadline-Ms, clamped to
# 5-1000 ms) can be spent in the queue of a busy machine, and the documented answer is then 503
# deadline_exceeded (with Retry-After), whatever else the request was. A request without the header
# is not excused.
LATE_BUDGET_MS = DEADLINE_MAX_MS
SCHEMATHESIS_CONFIG = """
# A request refused for its size (more than BATCH_MAX items) is rejected: 413 is a rejection.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# Scenarios of a few calls each (the stateful phase is the dearest per case).
[phases.stateful]
max-steps = 4

[phases.stateful.generation]
max-examples = 10

# Header fields and query parameters the service does not know are ignored, as HTTP has them
# ignored (RFC 9110, 5.1): adding one does not make a request invalid.
[generation]
allow-extra-parameters = false

# What JSON Schema cannot say of an inference request: that `data` holds exactly N x 30 numbers for
# the shape [N, 30], and that binary_data_size bytes follow the JSON header. The document says it in
# the descriptions and declares the 400; a request valid by the schema that breaks it is answered
# 400. Every other operation must accept every request its schema accepts.
[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
"""


def late(interaction: dict) -> bool:
    """Whether an answer is the documented deadline_exceeded to a budget the request set itself."""
    request = interaction.get("request") or {}
    response = interaction.get("response") or {}
    asked = (request.get("headers") or {}).get("X-Deadline-Ms", [None])[0]
    try:
        budget = budget_ms(asked, default_ms=LATE_BUDGET_MS + 1)  # no header: not excused
    except InvalidDeadline:
        return False
    content = response.get("content") or {}
    body = base64.b64decode(content["$base64"]) if "$base64" in content else str(content.get("text", "")).encode()
    retry_after = (response.get("headers") or {}).get("retry-after", [None])[0]
    path = urlsplit(request.get("uri", "")).path
    return budget <= LATE_BUDGET_MS and is_deadline_answer(path, response.get("status_code"), retry_after, body)


def schemathesis_events(report: Path):
    for line in report.read_text().splitlines():
        (kind, event), *_ = json.loads(line).items()
        yield kind, event


@pytest.mark.parametrize("run", RUNS)
def test_schemathesis_with_every_check_finds_nothing_undocumented(fuzz_stack, tmp_path, run):
    seed, phases = RUNS[run]
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    report = tmp_path / "events.ndjson"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{fuzz_stack.base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        phases,
        "--header",
        f"X-API-Key: {TEST_KEY}",
        "--max-examples",
        str(CONFORMANCE_EXAMPLES),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--continue-on-failure",
        # Shrinking replays a failing case many times: for a late answer, to no purpose.
        "--no-shrink",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
    ]
    replay = f": replay with CONFORMANCE_SEED={seed}" if seed != FIXED_SEED else ""
    print(f"\nschemathesis seed {seed} ({phases}){replay}")
    ran = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    summary = ran.stdout[ran.stdout.rfind("SUMMARY") :] if "SUMMARY" in ran.stdout else ran.stdout[-3000:]
    cases = checks = late_answers = 0
    operations = set()
    failures, errors = [], []
    for kind, event in schemathesis_events(report):
        if kind == "NonFatalError" or kind == "FatalError":
            errors.append(event)
        if kind != "ScenarioFinished":
            continue
        if event["status"] == "error":
            errors.append(event["recorder"]["label"])
        recorder = event["recorder"]
        operations.add(recorder["label"])
        for case_id, results in recorder.get("checks", {}).items():
            cases += 1
            checks += len(results)
            failed = [r["name"] for r in results if r["status"] == "failure"]
            if not failed:
                continue
            interaction = recorder["interactions"].get(case_id, {})
            if late(interaction):
                late_answers += 1
            else:
                request = interaction.get("request", {})
                failures.append((recorder["label"], failed, request.get("method"), request.get("uri")))
    print(
        f"schemathesis seed {seed}: {len(operations)} operations and scenarios, {cases} cases, {checks} checks, "
        f"{len(failures)} failures, {late_answers} deadline_exceeded answers to budgets <= {LATE_BUDGET_MS} ms\n"
        + summary
    )
    assert not errors, (errors, ran.stderr[-3000:])
    assert cases > 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert not failures, (failures[:20], summary)
